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

from edgeprune.errors import first_line
from edgeprune.host import this_host

FORMATS = ("onnx", "mlpackage", "engine", "decoder")


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
    # External data would make the runtime open paths named by the client: refused wherever a
    # tensor can sit (initializers, sparse initializers, Constant values, node attributes, subgraphs).
    if any(_external(t) for t in _tensors(model.graph)):
        raise BadArtifact("ONNX models with external data are not accepted: save the weights inside the file")


def _tensors(graph):
    """Yields every TensorProto of a graph and of its subgraphs."""
    import onnx

    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                yield attr.t
            elif attr.type == onnx.AttributeProto.TENSORS:
                yield from attr.tensors
            elif attr.type == onnx.AttributeProto.SPARSE_TENSOR:
                yield attr.sparse_tensor.values
                yield attr.sparse_tensor.indices
            elif attr.type == onnx.AttributeProto.GRAPH:
                yield from _tensors(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from _tensors(sub)


def _external(tensor) -> bool:
    import onnx

    return tensor.data_location == onnx.TensorProto.EXTERNAL or bool(tensor.external_data)


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

    from edgeprune.backends.onnx_tools import runtime as onnx_runtime

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
        raise BadArtifact(f"ONNX Runtime cannot load the model: {first_line(exc)}") from None
    if len(inputs) != len(sess.get_inputs()):
        raise RuntimeFailure(f"the model takes {len(sess.get_inputs())} inputs, {len(inputs)} were sent")
    feed = onnx_runtime.feeds(sess, inputs)
    try:
        sess.run(None, feed)
    except Exception as exc:
        raise RuntimeFailure(f"ONNX Runtime failed to run the model: {first_line(exc)}") from None
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
        raise BadArtifact(f"Core ML cannot load the package: {first_line(exc)}") from None
    names = [i.name for i in model.get_spec().description.input]
    if len(names) != len(inputs):
        raise RuntimeFailure(f"the model takes {len(names)} inputs, {len(inputs)} were sent")
    feed = dict(zip(names, inputs, strict=True))
    try:
        model.predict(feed)
    except Exception as exc:
        raise RuntimeFailure(f"Core ML failed to run the model: {first_line(exc)}") from None
    return Loaded(run=lambda: model.predict(feed), runtime=f"coreml {ct.__version__} (compute units ALL)")


def _tensorrt(path: Path, fmt: str, inputs: Sequence[np.ndarray], precision: str) -> Loaded:
    """Returns a TensorRT engine ready to time: the one uploaded, or one built here by the shared builder.

    Engines are specific to a GPU and a TensorRT version, so an ONNX model is built on the
    device itself, with the same builder and engine cache as ``edgeprune trt-build``.
    """
    if not importlib.util.find_spec("tensorrt"):
        raise RuntimeFailure("TensorRT is not installed on this device: pip install 'edgeprune[tensorrt]'")
    from edgeprune.backends.tensorrt.engine import (
        EngineRunner,
        engine_for_onnx,
        tensorrt_unavailable,
    )
    from edgeprune.errors import EdgepruneError, UnsupportedError

    reason = tensorrt_unavailable()
    if reason is not None:
        raise RuntimeFailure(f"TensorRT cannot run here: {reason}")
    shapes = [tuple(a.shape) for a in inputs]
    try:
        engine = path if fmt == "engine" else engine_for_onnx(path, precision, True, shapes).engine
        runner = EngineRunner(engine, shapes)
        if len(runner.inputs) != len(inputs):
            raise RuntimeFailure(f"the engine takes {len(runner.inputs)} inputs, {len(inputs)} were sent")
        runner.load(*inputs)
        runner.execute()
    except UnsupportedError as exc:  # a parser rejection, a foreign engine, a wrong shape
        raise BadArtifact(f"TensorRT cannot use the model: {first_line(exc)}") from None
    except EdgepruneError as exc:  # the builder found no engine
        raise RuntimeFailure(first_line(exc)) from None
    import tensorrt as trt
    import torch

    return Loaded(run=runner.execute, runtime=f"tensorrt {trt.__version__} ({torch.cuda.get_device_name()})")
