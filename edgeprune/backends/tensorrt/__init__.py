"""The TensorRT format: a hand-off bundle (static ONNX + recipe), and an engine where a GPU is."""

from edgeprune.backends.tensorrt.backend import TensorRTBackend

__all__ = ["TensorRTBackend"]
