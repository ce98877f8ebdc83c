"""TensorRT engines with the tensorrt Python API: build, cache, inspect, run, time.

The one engine builder: ``edgeprune trt-build`` builds a bundle's engine with it, a build on
a GPU machine does, and the device agent does for an ONNX model it is asked to time with
TensorRT. Needs the ``tensorrt`` package and a CUDA GPU (``pip install edgeprune[tensorrt]``
on the device). An engine is cached under a key of GPU name + TensorRT version + ONNX hash
(+ the build flags and input shapes), because an engine built for one of them is not valid
for another.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from edgeprune.backends.tensorrt.bundle import TIMING_CACHE, BundleSpec
from edgeprune.errors import EdgepruneError, UnsupportedError
from edgeprune.measurements import Latency
from edgeprune.timing import LatencyStats
from edgeprune.verify import TOLERANCE

CACHE_ENV = "EDGEPRUNE_CACHE_DIR"
_SPARSE_LINES = {
    "eligible": re.compile(r"Layers eligible for sparse math:\s*(.*)$"),
    "picked": re.compile(r"picked sparse implementation for layers:\s*(.*)$"),
}


def tensorrt_unavailable() -> str | None:
    """Returns why TensorRT engines cannot be built on this machine, or None when they can."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return ("the tensorrt Python package is not installed (on an NVIDIA device: pip install "
                "edgeprune[tensorrt], whose wheels come from NVIDIA's package index)")
    if gpu_name() is None:
        return "no CUDA GPU on this machine"
    return None


def gpu_name() -> str | None:
    """Returns the name of the first CUDA GPU, or None if there is none."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run([smi, "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20, check=True).stdout.strip().splitlines()
    except (subprocess.SubprocessError, OSError):
        return None
    return out[0].strip() if out else None


def cache_root() -> Path:
    """Returns the engine cache folder ($EDGEPRUNE_CACHE_DIR/tensorrt or ~/.cache/edgeprune/tensorrt)."""
    base = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "edgeprune"
    return Path(base) / "tensorrt"


def cache_key(gpu: str, tensorrt_version: str, onnx_sha256: str, precision: str, sparse: bool,
              shapes: Sequence[Sequence[int]] | None = None) -> str:
    """Returns the cache key: GPU name, TensorRT version, ONNX hash, the build flags and the input shapes."""
    slug = re.sub(r"[^a-z0-9]+", "-", gpu.lower()).strip("-")
    flags = f"{precision}{'-sparse' if sparse else ''}"
    fixed = "x".join("-".join(map(str, s)) for s in shapes) if shapes else "static"
    digest = hashlib.sha256(f"{gpu}|{tensorrt_version}|{onnx_sha256}|{flags}|{fixed}".encode()).hexdigest()[:12]
    return f"{slug}-trt{tensorrt_version}-{onnx_sha256[:12]}-{flags}-{digest}"


@dataclass
class EngineBuild:
    """An engine in the cache and what TensorRT chose for it."""

    engine: Path
    key: str
    cached: bool
    gpu: str
    tensorrt_version: str
    build_seconds: float
    layers: int = 0
    sparse_eligible: list[str] = field(default_factory=list)
    sparse_picked: list[str] = field(default_factory=list)
    sparse_tactics: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """Returns the build for a report."""
        out = asdict(self)
        out["engine"] = str(self.engine)
        return out

    def sparsity_summary(self, asked: bool) -> str:
        """Returns one line on whether sparse tactics were chosen (pain: TensorRT silently dense)."""
        if not asked:
            return "2:4 sparse tactics not requested"
        if self.sparse_picked or self.sparse_tactics:
            picked = self.sparse_picked or self.sparse_tactics
            return f"TensorRT chose sparse tactics for {len(picked)} layer(s): {', '.join(picked[:8])}"
        if self.sparse_eligible:
            return (f"{len(self.sparse_eligible)} layer(s) were eligible for 2:4 sparse math but TensorRT found "
                    "dense tactics faster for every one (sparse kernels win on wide layers only)")
        return "no layer was eligible for 2:4 sparse math (weights not 2:4 along the input dimension?)"


def _recording_logger(trt):
    """Returns a tensorrt ILogger that keeps every message (the sparsity report is INFO level)."""

    class RecordingLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.messages: list[tuple[object, str]] = []

        def log(self, severity, msg) -> None:
            self.messages.append((severity, msg))

    return RecordingLogger()


def build_engine(folder: Path, spec: BundleSpec, root: Path | None = None, force: bool = False) -> EngineBuild:
    """Returns the engine for the bundle on this GPU, built now or taken from the cache."""
    return engine_for_onnx(folder / spec.onnx, spec.precision, spec.sparsity == "2:4", None, root, force,
                           onnx_sha256=spec.onnx_sha256)


def engine_for_onnx(onnx_path: Path, precision: str, sparse: bool, shapes: Sequence[Sequence[int]] | None = None,
                    root: Path | None = None, force: bool = False, onnx_sha256: str | None = None) -> EngineBuild:
    """Returns the engine of an ONNX model on this GPU, built now or taken from the cache.

    ``shapes`` fixes the input shapes (min = opt = max) of a model whose inputs are dynamic;
    a bundle's ONNX is static and needs none. ``sparse`` lets TensorRT pick 2:4 sparse
    tactics (it keeps one only where it is faster).
    """
    import tensorrt as trt

    reason = tensorrt_unavailable()
    if reason is not None:
        raise UnsupportedError(f"cannot build a TensorRT engine here: {reason}")
    onnx_path = Path(onnx_path)
    gpu = gpu_name() or "unknown-gpu"
    digest = onnx_sha256 or hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    key = cache_key(gpu, trt.__version__, digest, precision, sparse, shapes)
    target = (root or cache_root()) / key
    engine_path = target / "model.engine"
    meta_path = target / "build.json"
    if engine_path.exists() and meta_path.exists() and not force:
        meta = json.loads(meta_path.read_text())
        return EngineBuild(engine_path, key, True, gpu, trt.__version__, meta["build_seconds"], meta["layers"],
                           meta["sparse_eligible"], meta["sparse_picked"], meta["sparse_tactics"])
    target.mkdir(parents=True, exist_ok=True)
    logger = _recording_logger(trt)
    builder = trt.Builder(logger)
    flags = 0
    if int(trt.__version__.split(".")[0]) < 10:  # explicit batch is the only mode from TensorRT 10
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [parser.get_error(i) for i in range(parser.num_errors)]
        described = "; ".join(f"node {e.node()} ({_operator(e)}): {e.desc()}" for e in errors[:5])
        raise UnsupportedError(f"TensorRT's ONNX parser rejected {onnx_path.name}: {described}")
    config = builder.create_builder_config()
    if precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)  # the ONNX carries explicit Q/DQ scales: no calibrator
    if sparse:
        config.set_flag(trt.BuilderFlag.SPARSE_WEIGHTS)
    if shapes and any(-1 in tuple(network.get_input(i).shape) for i in range(network.num_inputs)):
        profile = builder.create_optimization_profile()
        for i, shape in enumerate(shapes):
            profile.set_shape(network.get_input(i).name, tuple(shape), tuple(shape), tuple(shape))
        config.add_optimization_profile(profile)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    timing_file = target.parent / f"{key.rsplit('-', 3)[0]}-{TIMING_CACHE}"  # shared by engines of this GPU
    timing = config.create_timing_cache(timing_file.read_bytes() if timing_file.exists() else b"")
    config.set_timing_cache(timing, ignore_mismatch=False)
    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - start
    if serialized is None:
        errors = [m for s, m in logger.messages if s in (trt.ILogger.ERROR, trt.ILogger.INTERNAL_ERROR)]
        raise EdgepruneError(f"TensorRT failed to build the engine: {'; '.join(errors[-3:]) or 'no message'}")
    engine_path.write_bytes(bytes(serialized))
    timing_file.write_bytes(bytes(config.get_timing_cache().serialize()))
    eligible, picked = _sparse_lines([m for _, m in logger.messages])
    layers, tactics = _inspect(trt, logger, bytes(serialized))
    meta = {"build_seconds": round(seconds, 2), "layers": layers, "sparse_eligible": eligible,
            "sparse_picked": picked, "sparse_tactics": tactics}
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    return EngineBuild(engine_path, key, False, gpu, trt.__version__, round(seconds, 2), layers, eligible, picked,
                       tactics)


def _operator(error) -> str:
    getter = getattr(error, "node_operator", None)  # TensorRT 10 names the operator
    return getter() if callable(getter) else "operator unknown"


def _sparse_lines(messages: list[str]) -> tuple[list[str], list[str]]:
    """Returns the layers TensorRT's builder log calls eligible for, and picked, sparse math."""
    found: dict[str, list[str]] = {"eligible": [], "picked": []}
    for message in messages:
        for kind, pattern in _SPARSE_LINES.items():
            match = pattern.search(message)
            if match:
                found[kind] = [name.strip() for name in match.group(1).split(",") if name.strip()]
    return found["eligible"], found["picked"]


def _inspect(trt, logger, plan: bytes) -> tuple[int, list[str]]:
    """Returns (layer count, layers whose chosen tactic is a sparse kernel) from the engine inspector."""
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(plan)
    inspector = engine.create_engine_inspector()
    info = json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
    layers = [layer for layer in info.get("Layers", []) if isinstance(layer, dict)]
    sparse = [str(layer.get("Name", "?")) for layer in layers if "sparse" in str(layer.get("TacticName", "")).lower()]
    return len(layers), sparse


class EngineRunner:
    """Runs a serialized engine on this GPU with torch CUDA tensors as its buffers.

    ``shapes`` are the input shapes of an engine built with dynamic inputs (an optimization
    profile); a static engine's own shapes are used otherwise.
    """

    def __init__(self, engine_path: Path, shapes: Sequence[Sequence[int]] | None = None) -> None:
        import tensorrt as trt

        if not torch.cuda.is_available():
            raise UnsupportedError("running a TensorRT engine here needs PyTorch with CUDA (for its buffers)")
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self._engine is None:
            raise UnsupportedError("not a TensorRT engine for this GPU and TensorRT version")
        self._context = self._engine.create_execution_context()
        self._stream = torch.cuda.Stream()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        self.inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        for name, shape in zip(self.inputs, shapes or (), strict=False):
            if -1 in tuple(self._engine.get_tensor_shape(name)):
                self._context.set_input_shape(name, tuple(shape))
        self._buffers: dict[str, torch.Tensor] = {}
        for name in names:
            shape = tuple(self._context.get_tensor_shape(name))
            dtype = torch.from_numpy(np.empty(0, dtype=trt.nptype(self._engine.get_tensor_dtype(name)))).dtype
            self._buffers[name] = torch.empty(shape, dtype=dtype, device="cuda")
            self._context.set_tensor_address(name, self._buffers[name].data_ptr())
        self.batch = int(self._buffers[self.inputs[0]].shape[0])

    def load(self, *inputs) -> None:
        """Copies one batch of inputs (tensors or arrays of the engine's shapes) into the input buffers."""
        for name, value in zip(self.inputs, inputs, strict=True):
            tensor = value if isinstance(value, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(value))
            if tuple(tensor.shape) != tuple(self._buffers[name].shape):
                raise UnsupportedError(f"input {name} has shape {tuple(tensor.shape)}, the engine takes "
                                       f"{tuple(self._buffers[name].shape)}")
            self._buffers[name].copy_(tensor.to(self._buffers[name].dtype))

    def execute(self) -> None:
        """Runs the engine once on the current buffers and waits for it."""
        self._context.execute_async_v3(self._stream.cuda_stream)
        self._stream.synchronize()

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        """Returns the first output for inputs of any batch (run in blocks of the engine's batch)."""
        rows = []
        for start in range(0, inputs[0].shape[0], self.batch):
            for name, tensor in zip(self.inputs, inputs, strict=True):
                block = tensor[start : start + self.batch]
                self._buffers[name].copy_(block.to(self._buffers[name].dtype))
            self.execute()
            rows.append(self._buffers[self.outputs[0]].float().cpu().clone())
        return torch.cat(rows)


def verify_engine(runner: EngineRunner, reference: Path, tolerance: str) -> dict:
    """Returns how the engine's outputs compare with PyTorch's on the bundle's reference samples."""
    data = np.load(reference)
    inputs = [torch.from_numpy(data[f"input:{name}"]) for name in runner.inputs]
    want = torch.from_numpy(data["output"]).float()
    got = torch.stack([runner(*(t[i] for t in inputs)) for i in range(want.shape[0])]).reshape(want.shape)
    diff = float((want - got).abs().max())
    rel = diff / max(float(want.abs().max()), 1e-12)
    agreement = float((want.argmax(-1) == got.argmax(-1)).float().mean()) if want.dim() >= 2 else None
    rel_tol, agree_tol = TOLERANCE.get(tolerance, TOLERANCE["fp32"])
    passed = rel <= rel_tol and (agreement is None or agreement >= agree_tol)
    return {"method": "numeric", "subject": "TensorRT engine", "passed": passed, "max_abs_diff": diff,
            "rel_diff": rel, "agreement": agreement, "samples": int(want.shape[0] * want.shape[1])}


def time_engine(runner: EngineRunner) -> LatencyStats:
    """Returns latency statistics of the engine on this GPU (inputs already on the device)."""
    from edgeprune.timing import time_callable

    return time_callable(runner.execute)


def build_bundle(folder: Path, spec: BundleSpec, root: Path | None = None, force: bool = False,
                 measure: bool = True) -> dict:
    """Returns the trt-build result: the cached engine, its sparse tactics, verification and latency.

    Raises UnsupportedError (exit 2) with the reason where TensorRT or a GPU is missing:
    the engine is never faked.
    """
    build = build_engine(folder, spec, root, force)
    result: dict = {"bundle": str(folder), **build.to_dict(),
                    "sparsity": build.sparsity_summary(spec.sparsity == "2:4")}
    try:
        runner = EngineRunner(build.engine)
    except UnsupportedError as exc:
        result["verified"] = {"passed": False, "note": f"not run: {exc}"}
        return result
    reference = folder / spec.reference
    if reference.exists():
        result["verified"] = verify_engine(runner, reference, spec.tolerance or spec.precision)
    if measure:
        result["latency"] = Latency.measured(time_engine(runner), f"local: {build.gpu}",
                                             f"tensorrt {build.tensorrt_version}").to_dict()
    return result
