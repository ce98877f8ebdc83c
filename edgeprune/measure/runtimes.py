"""The runtimes a device runs an artifact with: ONNX Runtime, Core ML (macOS), TensorRT.

Each loader takes a file the device agent wrote under a name of its own choosing and returns
a callable that runs one inference; the timing protocol calls it. Artifacts are ONNX files,
Core ML packages or serialized TensorRT engines: nothing here ever unpickles anything.
"""

from __future__ import annotations

import importlib.util
import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeprune.host import this_host

FORMATS = ("onnx", "mlpackage", "engine")


class RuntimeFailure(Exception):
    """The artifact is well-formed but this device's runtime cannot load or run it."""


class BadArtifact(Exception):
    """The uploaded bytes are not a model of the format they claim to be."""


@dataclass(frozen=True)
class Loaded:
    """A model ready to run: one inference per call, and what ran it."""

    run: Callable[[], object]
    runtime: str


def device_description(name: str | None = None) -> str:
    """Returns this device in words: a board model where the OS names one, then the CPU."""
    board = ""
    for path in ("/proc/device-tree/model", "/sys/firmware/devicetree/base/model"):
        try:
            board = Path(path).read_text(errors="replace").strip("\x00 \n")
            break
        except OSError:
            continue
    if platform.system() == "Darwin":
        board = f"Mac ({platform.machine()}, macOS {platform.mac_ver()[0]})"
    parts = [p for p in (name, board, this_host().description) if p]
    return " — ".join(parts)


def available_runtimes() -> dict[str, str]:
    """Returns runtime name -> version for the runtimes installed on this device."""
    found: dict[str, str] = {}
    import onnxruntime

    found["onnxruntime"] = onnxruntime.__version__
    if platform.system() == "Darwin" and importlib.util.find_spec("coremltools"):
        import coremltools

        found["coreml"] = coremltools.__version__
    if importlib.util.find_spec("tensorrt"):
        try:
            import tensorrt

            found["tensorrt"] = tensorrt.__version__
        except Exception:  # an installed but broken TensorRT (no GPU driver) is not a runtime
            pass
    return found


def check_onnx_bytes(data: bytes) -> None:
    """Raises BadArtifact unless the bytes are an ONNX model with every weight inside it."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load_model_from_string(data)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise BadArtifact(f"not a valid ONNX model ({type(exc).__name__})") from None
    if not model.graph.node:
        raise BadArtifact("not a valid ONNX model (the graph has no nodes)")
    # External data would make the runtime open paths named by the client.
    for init in model.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL or init.external_data:
            raise BadArtifact("ONNX models with external data are not accepted: save the weights inside the file")


def load(path: Path, fmt: str, runtime: str, inputs: Sequence[np.ndarray], threads: int | None,
         precision: str = "fp32") -> Loaded:
    """Returns the model at ``path`` loaded for timing with the requested runtime."""
    if fmt == "onnx" and runtime == "onnxruntime":
        return _onnxruntime(path, inputs, threads)
    if fmt == "onnx" and runtime == "tensorrt" or fmt == "engine":
        return _tensorrt(path, fmt, inputs, precision)
    if fmt == "mlpackage":
        return _coreml(path, inputs)
    raise RuntimeFailure(f"format {fmt} cannot run with runtime {runtime}")


def _onnxruntime(path: Path, inputs: Sequence[np.ndarray], threads: int | None) -> Loaded:
    import onnxruntime as ort

    from edgeprune.backends import onnx_runtime

    try:
        available = ort.get_available_providers()
        # A GPU build of ONNX Runtime (a Jetson's) runs on CUDA; elsewhere the CPU.
        if "CUDAExecutionProvider" in available:
            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            options.log_severity_level = 3
            sess = ort.InferenceSession(str(path), options, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
        else:
            sess = onnx_runtime.session(path, threads or this_host().cores)
    except Exception as exc:  # ORT raises its own exception types for bad graphs
        raise BadArtifact(f"ONNX Runtime cannot load the model: {_first_line(exc)}") from None
    if len(inputs) != len(sess.get_inputs()):
        raise RuntimeFailure(f"the model takes {len(sess.get_inputs())} inputs, {len(inputs)} were sent")
    feed = onnx_runtime.feeds(sess, inputs)
    try:
        sess.run(None, feed)
    except Exception as exc:
        raise RuntimeFailure(f"ONNX Runtime failed to run the model: {_first_line(exc)}") from None
    providers = ",".join(p.removesuffix("ExecutionProvider") for p in sess.get_providers())
    return Loaded(run=lambda: sess.run(None, feed), runtime=f"onnxruntime {ort.__version__} ({providers})")


def _coreml(path: Path, inputs: Sequence[np.ndarray]) -> Loaded:
    if platform.system() != "Darwin":
        raise RuntimeFailure("Core ML models run only on macOS; start the agent on a Mac")
    if not importlib.util.find_spec("coremltools"):
        raise RuntimeFailure("coremltools is not installed on this device: pip install 'edgeprune[coreml]'")
    import coremltools as ct

    try:
        model = ct.models.MLModel(str(path), compute_units=ct.ComputeUnit.ALL)
    except Exception as exc:
        raise BadArtifact(f"Core ML cannot load the package: {_first_line(exc)}") from None
    names = [i.name for i in model.get_spec().description.input]
    if len(names) != len(inputs):
        raise RuntimeFailure(f"the model takes {len(names)} inputs, {len(inputs)} were sent")
    feed = dict(zip(names, inputs, strict=True))
    try:
        model.predict(feed)
    except Exception as exc:
        raise RuntimeFailure(f"Core ML failed to run the model: {_first_line(exc)}") from None
    return Loaded(run=lambda: model.predict(feed), runtime=f"coreml {ct.__version__} (compute units ALL)")


def _tensorrt(path: Path, fmt: str, inputs: Sequence[np.ndarray], precision: str) -> Loaded:
    if not importlib.util.find_spec("tensorrt"):
        raise RuntimeFailure("TensorRT is not installed on this device: pip install 'edgeprune[tensorrt]'")
    import tensorrt as trt
    import torch

    if not torch.cuda.is_available():
        raise RuntimeFailure("TensorRT needs a CUDA GPU and a CUDA build of torch on the device")
    logger = trt.Logger(trt.Logger.WARNING)
    if fmt == "engine":
        serialized = path.read_bytes()
    else:
        # Engines are specific to a GPU and a TensorRT version: build on the device itself.
        builder = trt.Builder(logger)
        network = builder.create_network(0)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse(path.read_bytes()):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise BadArtifact(f"TensorRT cannot parse the ONNX model: {errors[:300]}")
        config = builder.create_builder_config()
        if precision in ("fp16", "int8"):
            config.set_flag(trt.BuilderFlag.FP16)
        if precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)
        config.set_flag(trt.BuilderFlag.SPARSE_WEIGHTS)  # TensorRT keeps a sparse tactic only where faster
        opt = builder.create_optimization_profile()
        for i in range(network.num_inputs):
            shape = tuple(inputs[i].shape)
            opt.set_shape(network.get_input(i).name, shape, shape, shape)
        config.add_optimization_profile(opt)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise RuntimeFailure("TensorRT could not build an engine for the model")
    engine = trt.Runtime(logger).deserialize_cuda_engine(bytes(serialized))
    if engine is None:
        raise BadArtifact("not a TensorRT engine for this GPU and TensorRT version")
    context = engine.create_execution_context()
    buffers = []
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    input_names = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    if len(input_names) != len(inputs):
        raise RuntimeFailure(f"the engine takes {len(input_names)} inputs, {len(inputs)} were sent")
    for name, array in zip(input_names, inputs, strict=True):
        context.set_input_shape(name, tuple(array.shape))
        dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
        tensor = torch.from_numpy(np.ascontiguousarray(array.astype(dtype))).cuda()
        buffers.append(tensor)
        context.set_tensor_address(name, tensor.data_ptr())
    for name in names:
        if name in input_names:
            continue
        dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
        tensor = torch.empty(tuple(context.get_tensor_shape(name)), dtype=_torch_dtype(dtype), device="cuda")
        buffers.append(tensor)
        context.set_tensor_address(name, tensor.data_ptr())
    stream = torch.cuda.Stream()

    def run() -> None:
        context.execute_async_v3(stream.cuda_stream)
        stream.synchronize()

    run()
    return Loaded(run=run, runtime=f"tensorrt {trt.__version__} ({torch.cuda.get_device_name()})")


def _torch_dtype(dtype: np.dtype):
    import torch

    return {np.dtype(np.float32): torch.float32, np.dtype(np.float16): torch.float16,
            np.dtype(np.int8): torch.int8, np.dtype(np.int32): torch.int32, np.dtype(np.int64): torch.int64,
            np.dtype(np.bool_): torch.bool, np.dtype(np.uint8): torch.uint8}[dtype]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]
