"""Every strategy on every zoo architecture: the pruned model runs, exports to ONNX, and
ONNX Runtime computes what the pruned PyTorch model computes."""

from __future__ import annotations

import pytest
import torch

from edgeprune.backends.onnx_export import export_onnx
from edgeprune.backends.onnx_runtime import predictor
from edgeprune.prune import HybridConfig, NMConfig, StructuredConfig, UnstructuredConfig, prune_
from edgeprune.stats import count_macs, count_nonzero_params, count_params
from tests.onnx_checks import is_nm, matmul_weights, weight_sparsity
from tests.zoo import ZOO, calibration

CONFIGS = {
    "structured": StructuredConfig(0.5),
    "unstructured": UnstructuredConfig(0.5),
    "nm": NMConfig(2, 4),
    "hybrid": HybridConfig(0.5),
}


def _close(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).abs().max() / expected.abs().max())


@pytest.mark.parametrize("strategy", list(CONFIGS))
@pytest.mark.parametrize("arch", list(ZOO))
def test_pruned_model_exports_and_matches_onnx_runtime(arch, strategy, tmp_path):
    model, inputs = ZOO[arch]()
    result = prune_(model, CONFIGS[strategy], calibration(inputs), inputs)
    with torch.no_grad():
        expected = result.model(*inputs)
        dense = model(*inputs)
    assert expected.shape == dense.shape
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
