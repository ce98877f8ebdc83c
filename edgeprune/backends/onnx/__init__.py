"""The ONNX format: ``model.onnx`` for ONNX Runtime in fp32, fp16 or int8."""

from edgeprune.backends.onnx.backend import OnnxBackend

__all__ = ["OnnxBackend"]
