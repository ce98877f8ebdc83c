"""Backends: one module per runtime format (ONNX, Core ML, TensorRT)."""
