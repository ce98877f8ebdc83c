"""Backends: one subpackage per runtime format (onnx, coreml, tensorrt) and the ONNX tools they share.

Each registers its format on import, found by format name; optional dependencies (coremltools, tensorrt)
are imported only when a backend of that format is used.
"""

from edgeprune.backends import coreml as _coreml  # noqa: F401  (registers the format)
from edgeprune.backends import onnx as _onnx  # noqa: F401  (registers the format)
from edgeprune.backends import tensorrt as _tensorrt  # noqa: F401  (registers the format)
from edgeprune.backends.base import (
    Artifact,
    Backend,
    LowerRequest,
    backend_replaced,
    get_backend,
    known_formats,
)

__all__ = ["Artifact", "Backend", "LowerRequest", "backend_replaced", "get_backend", "known_formats"]
