"""Every strategy on every zoo architecture: the pruned model runs, exports to ONNX, and
ONNX Runtime computes what the pruned PyTorch model computes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from edgeprune.backends.onnx_tools.export import export_onnx
from edgeprune.backends.onnx_tools.runtime import predictor
from edgeprune.prune import HybridConfig, NMConfig, StructuredConfig, UnstructuredConfig, prune
from edgeprune.stats import count_macs, count_nonzero_params, count_params
from tests.zoo import ZOO, calibration, single_thread  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("single_thread")

CONFIGS = {
    "structured": StructuredConfig(0.5),
    "unstructured": UnstructuredConfig(0.5),
    "nm": NMConfig(2, 4),
    "hybrid": HybridConfig(0.5),
}


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


def _close(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).abs().max() / expected.abs().max())


@pytest.mark.parametrize("strategy", list(CONFIGS))
@pytest.mark.parametrize("arch", list(ZOO))
def test_pruned_model_exports_and_matches_onnx_runtime(arch, strategy, tmp_path):
    model, inputs = ZOO[arch]()
    result = prune(model, CONFIGS[strategy], calibration(inputs), inputs)
    with torch.no_grad():
        expected = result.model(*inputs)
        dense = model(*inputs)
    assert expected.shape == dense.shape
    assert json.loads(json.dumps(result.details))["config"]
    path = export_onnx(result.model, inputs, tmp_path / f"{arch}-{strategy}.onnx")
    assert _close(predictor(path)(*inputs), expected) < 1e-4

    macs = count_macs(result.model, inputs) / count_macs(model, inputs)
    if strategy == "structured":
        assert macs <= 0.6
        assert count_params(result.model) < 0.7 * count_params(model)
    elif strategy in ("unstructured", "nm"):
        assert macs == 1.0
        assert count_params(result.model) == count_params(model)
    if strategy == "unstructured":
        assert 0.4 <= weight_sparsity(path) <= 0.6
    if strategy == "nm":
        sparse_layers = len(result.details["layers"])
        assert sparse_layers >= 2
        exact = [name for name, w, axis in matmul_weights(path) if is_nm(w, axis, 2, 4)]
        assert len(exact) == sparse_layers
    if strategy in ("unstructured", "nm", "hybrid") and result.masks:
        zeros = sum(int((~m).sum()) for m in result.masks.values())
        assert count_nonzero_params(result.model) <= count_params(result.model) - zeros


MORE = [
    StructuredConfig(0.3, channel_multiple=8),
    StructuredConfig(0.7, allocation="global"),
    UnstructuredConfig(0.8, scope="global"),
    UnstructuredConfig(0.5, "wanda"),
    NMConfig(2, 4, "wanda"),
    HybridConfig(0.3),
]


@pytest.mark.parametrize("arch", list(ZOO))
def test_more_sparsities_and_criteria_run_with_the_expected_shape_and_size(arch):
    model, inputs = ZOO[arch]()
    data = calibration(inputs)
    with torch.no_grad():
        dense = model(*inputs)
    macs = {}
    for config in MORE:
        result = prune(model, config, data, inputs)
        with torch.no_grad():
            out = result.model(*inputs)
        assert out.shape == dense.shape and torch.isfinite(out).all(), config
        macs[config] = count_macs(result.model, inputs)
        if isinstance(config, UnstructuredConfig):
            assert abs(result.details["sparsity"] - config.sparsity) < 0.02, config
    # more channels removed, fewer MACs
    assert macs[MORE[1]] < macs[MORE[0]] < count_macs(model, inputs)
