"""Peak memory of one inference: the weights plus the activations alive at the worst moment."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import onnx

from edgeprune.measure.graph import LoweredGraph, lowered_graph
from edgeprune.measurements import ESTIMATED, Memory
from edgeprune.precision import bytes_per_weight

METHOD = ("estimated from the lowered graph: stored weights plus the largest set of activations alive at "
          "once, running the fused kernels in graph order (runtime workspace and the runtime itself excluded)")


@dataclass(frozen=True)
class MemoryEstimate:
    """Peak bytes of one inference and the two parts it is made of."""

    weights_bytes: float
    activations_peak_bytes: float
    peak_kernel: str

    @property
    def peak_bytes(self) -> float:
        return self.weights_bytes + self.activations_peak_bytes

    def memory(self) -> Memory:
        """Returns the estimate as the report's Memory (MB are 10^6 bytes, like the size budget)."""
        return Memory(ESTIMATED, peak_mb=round(self.peak_bytes / 1e6, 4), weights_mb=round(self.weights_bytes / 1e6, 4),
                      activations_peak_mb=round(self.activations_peak_bytes / 1e6, 4), peak_at=self.peak_kernel,
                      method=METHOD)


def activation_peak(graph: LoweredGraph) -> tuple[float, str]:
    """Returns the largest total of live activation bytes while running the kernels, and where.

    A tensor is alive from the kernel that writes it to the last kernel that reads it; graph
    inputs from the start and graph outputs to the end. A view (Reshape, Flatten) shares its
    input's buffer. While a kernel runs, its inputs and outputs are alive together.
    """
    buffer: dict[str, str] = {t: t for t in graph.graph_inputs}
    for k in graph.kernels:
        for out in k.outputs:
            buffer[out] = buffer.get(k.inputs[0], k.inputs[0]) if k.view and k.inputs else out
    last_use: dict[str, int] = {}
    end = len(graph.kernels)
    for i, k in enumerate(graph.kernels):
        for t in k.inputs:
            if t in buffer:
                last_use[buffer[t]] = i
    for t in graph.graph_outputs:
        if t in buffer:
            last_use[buffer[t]] = end
    size = {b: graph.tensor_bytes.get(b, 0.0) for b in set(buffer.values())}
    live: dict[str, float] = {buffer[t]: size[buffer[t]] for t in graph.graph_inputs}
    peak, where = sum(live.values()), "inputs"
    for i, k in enumerate(graph.kernels):
        for out in k.outputs:
            b = buffer[out]
            if b not in live:
                live[b] = size[b]
        total = sum(live.values())
        if total > peak:
            peak, where = total, k.name
        for b in [b for b in live if last_use.get(b, i) <= i]:
            del live[b]
    return peak, where


def peak_memory_graph(graph: LoweredGraph, precision: str | None = None) -> MemoryEstimate:
    """Returns the peak memory of one inference of a lowered graph.

    ``precision`` re-types an fp32 graph to the precision an artifact stores it at (a Core ML
    fp16 package estimated from its fp32 ONNX graph holds half the bytes).
    """
    activations, where = activation_peak(graph)
    weights = graph.weight_bytes
    if precision in ("fp16", "int8", "int4") and not any(k.precision != "fp32" for k in graph.kernels):
        scale = bytes_per_weight(precision) / 4
        weights, activations = weights * scale, activations * scale
    return MemoryEstimate(weights_bytes=weights, activations_peak_bytes=activations, peak_kernel=where)


def peak_memory(model: str | Path | onnx.ModelProto,
                input_shapes: Mapping[str, Sequence[int]] | Sequence[Sequence[int]],
                precision: str | None = None) -> MemoryEstimate:
    """Returns the peak memory of one inference of an ONNX model at the given input shapes."""
    return peak_memory_graph(lowered_graph(model, input_shapes), precision)
