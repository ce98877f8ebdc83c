"""The ONNX backend: an ONNX file for ONNX Runtime in fp32, fp16 or int8."""

from __future__ import annotations

import tempfile
from pathlib import Path

import onnx
import torch

from edgeprune.backends.base import (
    Artifact,
    Inputs,
    LowerRequest,
    check_palettize,
    check_precision,
    dense_storage_note,
    register_backend,
)
from edgeprune.backends.onnx_tools import runtime as onnx_runtime
from edgeprune.backends.onnx_tools.export import export_onnx
from edgeprune.backends.onnx_tools.fp16 import convert_fp16
from edgeprune.backends.onnx_tools.fusion import fp16_notes, inspect_kernels, int8_fusion_notes
from edgeprune.backends.onnx_tools.quantize import int8_config_for, quantize_int8
from edgeprune.errors import UnsupportedError
from edgeprune.uploads import UploadModel
from edgeprune.verify import Verification, structural

INT8_MODES = ("static", "dynamic")


@register_backend("onnx")
class OnnxBackend:
    """Lowers to ``model.onnx``; runs here with ONNX Runtime's CPU provider.

    fp32: the exported graph. fp16: weights and compute converted, fp32 at the boundaries.
    int8: ONNX Runtime's quantization tools, static QDQ calibrated on the workload's
    calibration batches, or dynamic for transformer MatMuls (see onnx_quantize).
    """

    name = "onnx"
    precisions = frozenset({"fp32", "fp16", "int8"})
    # ONNX initializers are dense tensors: zeros are stored (and compress well), never skipped.
    sparsity_storage = frozenset({"structured"})
    computes_int8 = True  # int8 QDQ graphs run ONNX Runtime's integer kernels

    def check(self, request: LowerRequest) -> None:
        check_precision(self, request)
        check_palettize(self, request)
        mode = request.options.get("int8_mode")
        if mode is not None and mode not in INT8_MODES:
            raise UnsupportedError(f"int8_mode must be one of {', '.join(INT8_MODES)}, got {mode!r}")

    def preflight(self, model: torch.nn.Module, example_inputs: Inputs, request: LowerRequest) -> None:
        """Exports the dense model once (the build calls this before pruning)."""
        with tempfile.TemporaryDirectory(prefix="edgeprune-preflight-") as tmp:
            export_onnx(model, example_inputs, Path(tmp) / "probe.onnx")

    def lower(self, model: torch.nn.Module, example_inputs: Inputs, request: LowerRequest, out_dir: Path) -> Artifact:
        path = out_dir / "model.onnx"
        note = dense_storage_note(self, request)
        notes = [note] if note else []
        if request.precision == "fp32":
            export_onnx(model, example_inputs, path)
            return Artifact(format=self.name, precision="fp32", path=path, files=[path], measure_path=path,
                            notes=notes)
        with tempfile.TemporaryDirectory(prefix="edgeprune-onnx-") as tmp:
            fp32 = export_onnx(model, example_inputs, Path(tmp) / "fp32.onnx")
            details: dict = {"fp32_size_bytes": fp32.stat().st_size}
            if request.precision == "fp16":
                convert_fp16(fp32, path)
                kernels = inspect_kernels(path)
                notes += fp16_notes(kernels)
            else:
                config = int8_config_for(request.profile, onnx.load(str(fp32)), request.options.get("int8_mode"))
                quantize_int8(fp32, path, request.calibration, config)
                kernels = inspect_kernels(path)
                notes += int8_fusion_notes(kernels)
                details["quantization"] = config.to_dict()
        details["kernels"] = kernels.to_dict()
        details["size_vs_fp32"] = round(path.stat().st_size / details["fp32_size_bytes"], 4)
        return Artifact(format=self.name, precision=request.precision, path=path, files=[path],
                        measure_path=path, notes=notes, details=details)

    def predictor(self, artifact: Artifact):
        return onnx_runtime.predictor(artifact.path)

    def cannot_run_reason(self) -> str | None:
        return None

    def upload(self, artifact: Artifact) -> UploadModel:
        return UploadModel("artifact", "onnx", Path(artifact.path), None, artifact.precision)

    def verify_structure(self, artifact: Artifact, model: torch.nn.Module, request: LowerRequest) -> Verification:
        return checked(artifact.path)


def checked(path: Path) -> Verification:
    """Returns the structural verification of an ONNX file: it passes onnx.checker (its external data too)."""
    try:
        onnx.checker.check_model(str(path))
        valid = True
    except onnx.checker.ValidationError:
        valid = False
    return structural([(f"{path.name} passes onnx.checker", valid)])
