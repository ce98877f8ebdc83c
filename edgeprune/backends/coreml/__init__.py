"""The Core ML format: an ``.mlpackage`` for Apple devices, compressed with coremltools."""

from edgeprune.backends.coreml.backend import CoreMLBackend

__all__ = ["CoreMLBackend"]
