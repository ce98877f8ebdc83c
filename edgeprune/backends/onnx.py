"""The ONNX backend: an ONNX file for ONNX Runtime (fp32 here; fp16 and int8 by quantization)."""

from __future__ import annotations

from pathlib import Path

import torch

from edgeprune.backends import onnx_runtime
from edgeprune.backends.base import (
    Artifact,
    Inputs,
    LowerRequest,
    check_precision,
    register_backend,
)
from edgeprune.backends.onnx_export import export_onnx


class OnnxBackend:
    """Lowers to ``model.onnx``; runs here with ONNX Runtime's CPU provider."""

    name = "onnx"
    precisions = frozenset({"fp32"})
    # ONNX initializers are dense tensors: zeros are stored (and compress well), never skipped.
    sparsity_storage = frozenset({"structured"})

    def check(self, request: LowerRequest) -> None:
        check_precision(self, request)

    def lower(self, model: torch.nn.Module, example_inputs: Inputs, request: LowerRequest, out_dir: Path) -> Artifact:
        path = export_onnx(model, example_inputs, out_dir / "model.onnx")
        return Artifact(format=self.name, precision=request.precision, path=path, files=[path], measure_path=path)

    def predictor(self, artifact: Artifact):
        return onnx_runtime.predictor(artifact.path)

    def cannot_run_reason(self) -> str | None:
        return None


@register_backend("onnx")
def _factory() -> OnnxBackend:
    return OnnxBackend()
