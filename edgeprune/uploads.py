"""What a device agent is sent to time: one model's role, agent format, path and runtime.

Backends say how their artifact is uploaded and the agent's wire format packs it; it sits
below both so that the device side imports neither the backends nor torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgeprune.errors import InputError


@dataclass(frozen=True)
class UploadModel:
    """One model to time on the device: its role in the reply, its format, where it lies here."""

    role: str
    format: str  # onnx | mlpackage | engine
    path: Path
    runtime: str | None = None  # onnxruntime or tensorrt for onnx; the agent picks when None
    precision: str = "fp32"  # what TensorRT builds an ONNX model at


def upload_format(path: Path) -> str:
    """Returns the agent format of an artifact path; InputError for anything else."""
    if path.is_dir() and path.suffix == ".mlpackage":
        return "mlpackage"
    if path.suffix == ".onnx":
        return "onnx"
    if path.suffix in (".engine", ".plan", ".trt"):
        return "engine"
    raise InputError(f"{path}: the agent runs .onnx files, .mlpackage folders and TensorRT .engine files only")
