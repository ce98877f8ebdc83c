"""Reading weights back out of exported ONNX files, to check what reached the artifact."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper


def matmul_weights(path: str | Path) -> list[tuple[str, np.ndarray, int]]:
    """Returns (name, array, reduction axis) for every constant weight of a Conv, Gemm or MatMul."""
    model = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    found = {}
    for node in model.graph.node:
        if len(node.input) < 2 or node.input[1] not in inits:
            continue
        weight = inits[node.input[1]]
        if node.op_type == "Conv":
            found[node.input[1]] = 1
        elif node.op_type == "MatMul" and weight.ndim == 2:
            found[node.input[1]] = 0
        elif node.op_type == "Gemm":
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            found[node.input[1]] = 1 if trans_b else 0
    return [(name, inits[name], axis) for name, axis in found.items()]


def weight_sparsity(path: str | Path) -> float:
    """Returns the fraction of zeros over every initializer with two or more dimensions."""
    model = onnx.load(str(path))
    arrays = [numpy_helper.to_array(i) for i in model.graph.initializer]
    weights = [a for a in arrays if a.ndim >= 2]
    return float(sum(int((a == 0).sum()) for a in weights) / sum(a.size for a in weights))


def is_nm(array: np.ndarray, axis: int, n: int, m: int) -> bool:
    """Returns True if every block of m consecutive entries along ``axis`` has exactly n non-zeros."""
    moved = np.moveaxis(array, axis, -1)
    if moved.shape[-1] % m:
        return False
    blocks = moved.reshape(-1, m)
    return bool(((blocks != 0).sum(1) == n).all())
