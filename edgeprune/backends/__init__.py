"""Backends: one module per runtime format (ONNX, Core ML, TensorRT), found by format name."""

from edgeprune.backends import onnx as _onnx  # noqa: F401  (registers the format)
from edgeprune.backends.base import Artifact, Backend, LowerRequest, get_backend, known_formats

__all__ = ["Artifact", "Backend", "LowerRequest", "get_backend", "known_formats"]
