"""Weight-only quantization of one matrix to ONNX Runtime's MatMulNBits blocks (int4 or int8).

Each matrix is quantized on its own, by ONNX Runtime's own quantizer run on a one-MatMul
graph, so a decoder is written layer by layer without the whole model in memory and every
algorithm the quantizer offers (round-to-nearest, k-quant, HQQ) serves alike. GPTQ is not
offered: it needs calibration through the whole graph at once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ALGORITHMS = ("rtn", "k_quant", "hqq")


@dataclass(frozen=True)
class WeightOnly:
    """How matrices are quantized: bits, block size along the input dimension, symmetry, algorithm.

    ``accuracy_level`` is MatMulNBits' compute type on the CPU (4: int8 activations, the
    fastest where the CPU has VNNI; 0: the input's own type).
    """

    bits: int = 4
    block_size: int = 32
    symmetric: bool = True
    algorithm: str = "rtn"
    accuracy_level: int = 4

    def __post_init__(self) -> None:
        if self.bits not in (4, 8):
            raise ValueError(f"weight-only quantization takes 4 or 8 bits, got {self.bits}")
        if self.block_size < 16 or self.block_size & (self.block_size - 1):
            raise ValueError(f"block size must be a power of two >= 16, got {self.block_size}")
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {', '.join(ALGORITHMS)}, got {self.algorithm!r}")
        if self.algorithm == "hqq" and self.symmetric:
            object.__setattr__(self, "symmetric", False)  # HQQ fits a zero point per block

    def describe(self) -> str:
        return (f"int{self.bits} weights in blocks of {self.block_size} ({'symmetric' if self.symmetric else 'with zero points'}),"
                f" ONNX Runtime {self.algorithm.upper().replace('_', '-')}, accuracy level {self.accuracy_level}")

    def to_dict(self) -> dict:
        return {"bits": self.bits, "block_size": self.block_size, "symmetric": self.symmetric,
                "algorithm": self.algorithm, "accuracy_level": self.accuracy_level}


@dataclass(frozen=True)
class QuantizedMatrix:
    """A (K, N) matrix as MatMulNBits stores it: packed blocks, scales and (asymmetric) zero points."""

    packed: np.ndarray
    scales: np.ndarray
    zero_points: np.ndarray | None
    k: int
    n: int
    config: WeightOnly

    @property
    def nbytes(self) -> int:
        return self.packed.nbytes + self.scales.nbytes + (self.zero_points.nbytes if self.zero_points is not None else 0)


def _algo_config(config: WeightOnly):
    from onnxruntime.quantization import matmul_nbits_quantizer as q

    if config.algorithm == "hqq":
        return q.HQQWeightOnlyQuantConfig(block_size=config.block_size, bits=config.bits)
    if config.algorithm == "k_quant":
        return q.KQuantWeightOnlyQuantConfig()
    return q.DefaultWeightOnlyQuantConfig(block_size=config.block_size, is_symmetric=config.symmetric,
                                          accuracy_level=config.accuracy_level, bits=config.bits)


def quantize_matrix(weight: np.ndarray, config: WeightOnly) -> QuantizedMatrix:
    """Returns ``weight`` (K inputs x N outputs, fp32) quantized as ONNX Runtime's MatMulNBits holds it.

    Round-to-nearest goes straight to ONNX Runtime's C++ block quantizer (no copy of the
    matrix in a graph: an embedding table of 32,000 rows is quantized in its own memory);
    k-quant and HQQ run the quantizer on a one-MatMul graph.
    """
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantizer,
        MatMulNBitsQuantizer,
    )

    k, n = weight.shape
    if config.algorithm == "rtn":
        packed, scales, zero_points = DefaultWeightOnlyQuantizer(_algo_config(config)).qbits_block_quant(
            np.ascontiguousarray(weight, dtype=np.float32))
        return QuantizedMatrix(packed, scales.reshape(n, -1), None if config.symmetric else zero_points, k, n, config)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="m")], "one",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])],
        [numpy_helper.from_array(np.ascontiguousarray(weight, dtype=np.float32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    quiet = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
    level = quiet.level
    quiet.setLevel(logging.WARNING)  # it logs every node at INFO
    try:
        quantizer = MatMulNBitsQuantizer(model, bits=config.bits, block_size=config.block_size,
                                         is_symmetric=config.symmetric, accuracy_level=config.accuracy_level,
                                         algo_config=_algo_config(config))
        quantizer.process()
    finally:
        quiet.setLevel(level)
    out = quantizer.model.model if hasattr(quantizer.model, "model") else quantizer.model
    node = next(nd for nd in out.graph.node if nd.op_type == "MatMulNBits")
    inits = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if attrs.get("block_size") != config.block_size or attrs.get("bits") != config.bits:
        raise RuntimeError(f"ONNX Runtime quantized with {attrs}, not {config.to_dict()}")
    zero_points = inits.get(node.input[3]) if len(node.input) > 3 and node.input[3] else None
    return QuantizedMatrix(inits[node.input[1]], inits[node.input[2]], zero_points, k, n, config)


def matmul_nbits_node(x: str, y: str, name: str, matrix: QuantizedMatrix, names: tuple[str, str, str]) -> onnx.NodeProto:
    """Returns the MatMulNBits node computing ``y = x @ matrix`` from initializers named ``names``."""
    inputs = [x, names[0], names[1]] + ([names[2]] if matrix.zero_points is not None else [])
    c = matrix.config
    return helper.make_node("MatMulNBits", inputs, [y], name=name, domain="com.microsoft", K=matrix.k, N=matrix.n,
                            bits=c.bits, block_size=c.block_size, accuracy_level=c.accuracy_level)
