"""int8 quantization of an ONNX file with ONNX Runtime's quantization tools.

Static: QDQ format, weights per output channel, activation ranges calibrated on the
workload's calibration batches. Dynamic: MatMul weights int8, activations quantized at run
time (what transformer MatMuls take best on CPUs). Which one, and which activation type,
follows the profile: see ``int8_config_for``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

from edgeprune.errors import InputError
from edgeprune.host import Host, this_host
from edgeprune.profile import Profile

Inputs = tuple[torch.Tensor, ...]

# Operators whose weights hold nearly all of a network's parameters.
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclass(frozen=True)
class Int8Config:
    """How to quantize an ONNX file to int8, and why.

    mode: "static" (QDQ, calibrated) or "dynamic" (MatMul weights int8, activations
    quantized at run time). activation: "u8" or "s8". reduce_range: 7-bit weights.
    symmetric_activations: zero points of 0 (TensorRT requires them). op_types: the operator
    types to quantize (empty: every operator ONNX Runtime's quantizer handles).
    """

    mode: str = "static"
    activation: str = "u8"
    per_channel: bool = True
    reduce_range: bool = False
    symmetric_activations: bool = False
    op_types: tuple[str, ...] = ()
    reasons: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        """Returns the settings and reasons for a report."""
        return {
            "mode": self.mode, "format": "QDQ" if self.mode == "static" else "integer ops",
            "activation": self.activation if self.mode == "static" else "u8",
            "weight": "s8", "per_channel": self.per_channel, "reduce_range": self.reduce_range,
            "reasons": list(self.reasons),
        }


def int8_config_for(profile: Profile, model: onnx.ModelProto, mode: str | None = None,
                    host: Host | None = None) -> Int8Config:
    """Returns the int8 settings for a model on a profile's device, with the reasons.

    - Transformer-like graphs (most weights in MatMuls) get dynamic quantization of their
      MatMuls; convolutional graphs get static QDQ. ``mode`` overrides the choice.
    - Activations are U8 where the profile says so (x86: U8xS8 is the product its kernels take,
      and ONNX Runtime fuses residual adds into QLinearAdd only for U8), S8 otherwise.
    - Weights keep 7 bits (reduce_range) where an x86 int8 kernel class without VNNI or AMX
      runs them, on the device or on ``host`` (this machine, which verifies): 8-bit weights
      times U8 activations can saturate vpmaddubsw's 16-bit pair sums.
    """
    reasons: list[str] = []
    if mode is None:
        share = matmul_weight_share(model)
        mode = "dynamic" if share > 0.5 else "static"
        reasons.append(
            f"{share:.0%} of the weights are in MatMuls: "
            + ("dynamic int8 MatMuls (transformer-style graph)" if mode == "dynamic"
               else "static QDQ int8 with calibrated activation ranges")
        )
    elif mode not in ("static", "dynamic"):
        raise InputError(f"int8 mode must be static or dynamic, got {mode!r}")
    else:
        reasons.append(f"{mode} int8 as requested")
    activation = profile.int8_activation
    if mode == "static":
        reasons.append(f"{activation.upper()} activations, S8 weights per channel (profile {profile.name})")
    else:
        reasons.append("dynamic quantization computes U8 activations at run time, S8 weights per channel")
    reduce_range, why = reduce_range_for(profile, host)
    if reduce_range:
        reasons.append(why)
    return Int8Config(mode=mode, activation=activation, reduce_range=reduce_range,
                      op_types=("MatMul",) if mode == "dynamic" else (), reasons=tuple(reasons))


def tensorrt_int8_config() -> Int8Config:
    """Returns the settings for explicit-quantization (Q/DQ) ONNX that TensorRT builds from.

    TensorRT takes symmetric int8 (zero points of 0) and wants Q/DQ pairs on the inputs of
    its weighted layers; it fuses them and picks int8 kernels. GPU int8 math sums in 32
    bits, so weights keep all 8 bits.
    """
    return Int8Config(
        mode="static", activation="s8", per_channel=True, reduce_range=False, symmetric_activations=True,
        op_types=WEIGHTED_OPS,
        reasons=("TensorRT explicit quantization: symmetric S8 Q/DQ on the inputs of Conv, Gemm and MatMul",),
    )


def reduce_range_for(profile: Profile, host: Host | None = None) -> tuple[bool, str]:
    """Returns whether to keep 7-bit weights, and why.

    The artifact runs on the device and is verified and scored on this machine (``host``),
    so both count: an x86 int8 kernel class without VNNI or AMX on either side saturates
    full-range int8 products.
    """
    if not profile.int8_full_range:
        return True, (f"7-bit weights (reduce_range): profile {profile.name} runs {profile.kernel_class('int8') or 'unknown'} "
                      "int8 kernels (no VNNI), and full-range U8xS8 products saturate their 16-bit pair sums")
    host = host or this_host()
    if not host.int8_full_range:
        return True, (f"7-bit weights (reduce_range): this build machine runs {host.kernel_class('int8')} int8 "
                      "kernels (no VNNI) and verifies the artifact with them, which saturate full-range weights")
    return False, ""


def matmul_weight_share(model: onnx.ModelProto) -> float:
    """Returns the fraction of weight parameters held by MatMuls with a constant weight."""
    sizes = {init.name: int(np.prod(init.dims)) for init in model.graph.initializer}
    # a graph without convolutions computes its Gemms as matrix products too (GPT-2's Conv1D exports as Gemm)
    matrix_ops = ("MatMul",) if any(n.op_type in ("Conv", "ConvTranspose") for n in model.graph.node) \
        else ("MatMul", "Gemm")
    matmul = other = 0
    for node in model.graph.node:
        if node.op_type not in WEIGHTED_OPS:
            continue
        weight = next((sizes[name] for name in node.input[:2] if name in sizes), 0)
        if node.op_type in matrix_ops:
            matmul += weight
        else:
            other += weight
    total = matmul + other
    return matmul / total if total else 0.0


def _feed(t: torch.Tensor) -> np.ndarray:
    """Returns a calibration input as the graph takes it: floats as float32, token ids as they are."""
    array = t.detach().cpu().numpy()
    return array.astype(np.float32) if np.issubdtype(array.dtype, np.floating) else array


class _Batches:
    """Feeds calibration batches to ONNX Runtime's calibrator (a CalibrationDataReader)."""

    def __init__(self, names: Sequence[str], batches: Sequence[Inputs]) -> None:
        self._feeds = iter([
            {name: _feed(t) for name, t in zip(names, batch, strict=True)}
            for batch in batches
        ])

    def get_next(self) -> dict | None:
        return next(self._feeds, None)


def quantize_int8(src: Path, dst: Path, calibration: Sequence[Inputs], config: Int8Config) -> Path:
    """Returns ``dst`` after writing the int8 model of ``src`` there.

    The model is first pre-processed (shape inference and graph optimization, as ONNX
    Runtime's tools recommend: batch norms folded, shapes known to the quantizer).
    """
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    with tempfile.TemporaryDirectory(prefix="edgeprune-quant-") as tmp, _quiet():
        prepared = Path(tmp) / "prepared.onnx"
        _pre_process(src, prepared)
        if config.mode == "dynamic":
            quantize_dynamic(
                str(prepared), str(dst), op_types_to_quantize=list(config.op_types) or None,
                per_channel=config.per_channel, reduce_range=config.reduce_range, weight_type=QuantType.QInt8,
            )
            return dst
        if not calibration:
            raise InputError("static int8 quantization needs calibration batches (Workload.calibration)")
        names = [i.name for i in onnx.load(str(prepared), load_external_data=False).graph.input]
        activation = QuantType.QUInt8 if config.activation == "u8" else QuantType.QInt8
        extra = {"ActivationSymmetric": config.symmetric_activations, "WeightSymmetric": True}
        if config.symmetric_activations:
            # TensorRT builds from Q/DQ on the inputs of weighted layers and fuses the rest itself;
            # it takes int8 Q/DQ only, so biases stay float (it folds them into its int8 kernels).
            extra["OpTypesToExcludeOutputQuantization"] = list(config.op_types)
            extra["QuantizeBias"] = False
        quantize_static(
            str(prepared), str(dst), _Batches(names, calibration), quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(config.op_types) or None, per_channel=config.per_channel,
            reduce_range=config.reduce_range, activation_type=activation, weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax, extra_options=extra,
        )
    return dst


def _pre_process(src: Path, dst: Path) -> None:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(src), str(dst))
    except Exception:  # symbolic shape inference gives up on some exported graphs; ONNX's own is enough
        quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Keeps the quantizer's advice and progress lines out of the user's terminal."""
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)
