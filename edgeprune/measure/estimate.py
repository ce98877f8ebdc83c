"""The roofline estimator: latency of a lowered graph on a profile's device, without the device.

Per fused kernel: time = max(FLOPs / effective compute, bytes / effective bandwidth) + the
per-kernel overhead; the model's latency is the sum over kernels (batch-1 inference runs
them one after another). Effective compute is the profile's peak for the kernel's precision
times ``efficiency.compute`` (or its ``compute_by_precision`` factor); a shallow convolution (an
image's first layer, fewer than 4 input channels a window tap) adds its per-output work,
``efficiency.shallow_conv_us``, and a depthwise one its own (``efficiency.depthwise_us``); an
operator between layers adds its per-element work (``efficiency.elementwise_us``) to its
roofline time; effective bandwidth is the memory bandwidth times
``efficiency.bandwidth``. Sparsity buys speed only where the profile says the hardware
exploits it: N:M sparse peaks on layers wide enough, unstructured skipping above the
profile's threshold. Everything else is dense math, whatever zeros the weights hold.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import onnx

from edgeprune.measure.graph import ANCHORS, Kernel, LoweredGraph, lowered_graph
from edgeprune.precision import bytes_per_weight
from edgeprune.profile import Profile


@dataclass(frozen=True)
class KernelTime:
    """One fused kernel's estimate: what bounds it and how long it takes."""

    name: str
    ops: tuple[str, ...]
    precision: str
    flops: float
    bytes: float
    ms: float
    bound: str  # "compute" or "memory"
    sparse: str | None = None  # "2:4" or "unstructured" when the device skips zeros here


@dataclass(frozen=True)
class Estimate:
    """The estimated latency of one graph on one profile, with its per-kernel breakdown."""

    ms: float
    profile: str
    flops: float
    bytes: float
    kernels: tuple[KernelTime, ...]
    unknown_shapes: int = 0
    # layers (convolutions, matrix products) whose operands' sizes stayed unknown: their arithmetic is
    # not counted, so the estimate is a lower bound, too low to prove a budget with
    unsized_layers: tuple[str, ...] = ()
    # quantized layers the runtime leaves in float (charged as fp32 plus their (de)quantizations)
    unfused_layers: int = 0

    def summary(self) -> dict:
        """Returns the figures a report shows: totals, counts and what bounds the time."""
        by_bound: dict[str, float] = {}
        for k in self.kernels:
            by_bound[k.bound] = by_bound.get(k.bound, 0.0) + k.ms
        return {
            "ms": round(self.ms, 4),
            "profile": self.profile,
            "gflops": round(self.flops / 1e9, 4),
            "mbytes_moved": round(self.bytes / 1e6, 3),
            "kernels": len(self.kernels),
            "ms_by_bound": {k: round(v, 4) for k, v in sorted(by_bound.items())},
            "sparse_kernels": sum(1 for k in self.kernels if k.sparse),
            **({"kernels_with_unknown_shapes": self.unknown_shapes} if self.unknown_shapes else {}),
            **({"unfused_int8_layers_as_fp32": self.unfused_layers} if self.unfused_layers else {}),
            "method": METHOD,
        }


METHOD = ("roofline over the fused kernels of the lowered ONNX graph: per kernel "
          "max(FLOPs / (peak x efficiency.compute) + a convolution's per-output work (more for a shallow or "
          "depthwise one), "
          "bytes / (bandwidth x efficiency.bandwidth)) "
          "+ an operator between layers' per-element work + efficiency.layer_overhead_us, summed")


def _peak_tops(profile: Profile, precision: str, sparse: bool) -> float:
    """Returns the peak for a precision; a precision the device lacks runs at the nearest it has."""
    for p in (precision, "fp16", "fp32"):
        if p in profile.compute:
            peak = profile.compute[p]
            return (peak.sparse_tops or peak.dense_tops) if sparse else peak.dense_tops
    return profile.peak_tops(precision, sparse)


def _sparse_speed(kernel: Kernel, profile: Profile, precision: str) -> tuple[str | None, float, float]:
    """Returns (kind, fraction of FLOPs computed, fraction of weight bytes stored) for a kernel.

    (None, 1, 1) unless the profile turns this kernel's zeros into speed.
    """
    if not kernel.weights:
        return None, 1.0, 1.0
    w = kernel.weights[0]
    nm = profile.sparsity.nm
    if nm is not None and w.nm is not None:
        n, m = (int(x) for x in nm.pattern.split(":"))
        peak = profile.compute.get(precision)
        wide = min(kernel.in_channels, kernel.out_channels) >= nm.min_channels
        if w.nm[1] == m and w.nm[0] <= n and wide and peak is not None and peak.sparse_tops:
            # Compressed N:M storage: the kept values plus 2 bits of index each.
            itemsize = bytes_per_weight(precision)
            return f"{n}:{m}", 1.0, n / m * (1 + 2 / (8 * itemsize))
    un = profile.sparsity.unstructured
    if un is not None and w.zero_fraction >= un.min_sparsity:
        dense = 1.0 - w.zero_fraction
        itemsize = bytes_per_weight(precision)
        # The device skips zero weights; it stores the rest plus a one-bit mask per weight.
        return "unstructured", dense, dense + 1 / (8 * itemsize)
    return None, 1.0, 1.0


def kernel_time(kernel: Kernel, profile: Profile, precision: str | None = None) -> KernelTime:
    """Returns the estimate for one kernel on the profile.

    ``precision`` re-types an fp32 kernel (a Core ML or TensorRT artifact estimated from an
    fp32 ONNX graph runs at the artifact's precision): its bytes scale with the element size.
    """
    prec = kernel.precision
    scale = 1.0
    if precision and precision != prec and prec == "fp32":
        scale = bytes_per_weight(precision) / 4
        prec = precision
    eff = profile.efficiency
    sparse, flop_frac, weight_frac = _sparse_speed(kernel, profile, prec)
    peak = _peak_tops(profile, prec, sparse is not None and sparse != "unstructured")
    flops = kernel.flops * flop_frac
    moved = (kernel.weight_bytes * weight_frac + kernel.activation_bytes) * scale
    if kernel.view:
        return KernelTime(kernel.name, tuple(kernel.ops), prec, 0.0, 0.0, 0.0, "view")
    compute_s = flops / (peak * 1e12 * eff.compute_for(prec)) \
        + eff.shallow_conv_us(prec, kernel.tap_channels, kernel.window_rows, kernel.output_elements, kernel.out_channels) * 1e-6 \
        + eff.depthwise_us(prec, kernel.depthwise_outputs, kernel.depthwise_channels) * 1e-6 + eff.conv_output_us(prec, kernel.output_elements) * 1e-6
    memory_s = moved / (profile.memory_bandwidth_gbs.value * 1e9 * eff.bandwidth)
    # an operator between layers pays its per-element work on top of its memory traffic (how the probe fits it)
    seconds = max(compute_s, memory_s) + eff.elementwise_us(prec, kernel.elements) * 1e-6 + eff.overhead_us_for(prec) * 1e-6
    bound = "compute" if compute_s >= memory_s else "memory"
    return KernelTime(kernel.name, tuple(kernel.ops), prec, flops, moved, seconds * 1e3, bound, sparse)


def estimate_graph(graph: LoweredGraph, profile: Profile, precision: str | None = None) -> Estimate:
    """Returns the estimated latency of a lowered graph on the profile's device."""
    times = tuple(kernel_time(k, profile, precision) for k in graph.kernels)
    return Estimate(
        ms=sum(t.ms for t in times), profile=profile.name, flops=sum(t.flops for t in times),
        bytes=sum(t.bytes for t in times), kernels=times,
        unknown_shapes=sum(1 for k in graph.kernels if k.unknown_shape),
        unsized_layers=tuple(k.name for k in graph.kernels if k.unknown_shape and k.op in ANCHORS),
        unfused_layers=sum(1 for k in graph.kernels if k.unfused),
    )


def estimate_onnx(model: str | Path | onnx.ModelProto,
                  input_shapes: Mapping[str, Sequence[int]] | Sequence[Sequence[int]],
                  profile: Profile, precision: str | None = None,
                  unfused: frozenset[str] = frozenset(), runtime: str | None = None) -> Estimate:
    """Returns the estimated latency of an ONNX model at the given input shapes on a profile.

    ``unfused``: the nodes the runtime leaves in float behind a DequantizeLinear
    (``backends.onnx_tools.fusion.unfused_nodes`` asks ONNX Runtime); they are charged as fp32.
    ``runtime``: "onnxruntime" when ONNX Runtime runs the file (its fusions, not a compiler's).
    """
    return estimate_graph(lowered_graph(model, input_shapes, unfused, runtime), profile, precision)


def estimate_swing(profile: Profile, kernels: int | None = None, ms: float | None = None) -> tuple[float | None, str]:
    """Returns an estimate's spread on a profile (how much slower than when fastest its device may run; None for
    a steady one) and what the estimate's note says of it ('' or a clause ending in '; ').

    The probe's swing bounds it as one factor; where the probe also timed what a kernel split over the threads
    cost at times (``stall_us``) and the estimate's ``kernels`` and ``ms`` are given, that cost for each kernel,
    when less: a large model's long kernels hide it, a small one's do not.
    """
    eff = profile.efficiency
    spread = round(eff.swing - 1, 4)
    per_kernel = eff.stall_us is not None and kernels and ms and ms > 0
    if per_kernel and eff.stall_us * kernels / 1000 / ms < spread:
        spread = round(eff.stall_us * kernels / 1000 / ms, 4)
        why = f"each of its {kernels} kernels took up to {eff.stall_us:g} us longer than when fastest"
    else:
        why = f"this device ran up to {spread:.0%} slower than when fastest"
    if spread <= 0:
        return None, ""
    return spread, f"while probed, {why}, so the gate pads the estimate by {spread:.0%} too; "
