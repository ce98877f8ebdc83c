"""The device side: the agent that runs on a device, the runtimes it times with, the wire format between it
and the machine that builds, and the decoder loop. It imports nothing of the build side (no torch), so a
device needs only ONNX Runtime (or Core ML, or TensorRT) and this package."""
