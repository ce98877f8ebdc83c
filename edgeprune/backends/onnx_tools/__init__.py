"""The ONNX tools every backend shares: export, ONNX Runtime sessions, int8 and fp16 conversion, fusion checks."""
