"""The TensorRT backend: a hand-off bundle (static ONNX + trtexec recipe), an engine where a GPU is.

The bundle's ONNX is verified here against PyTorch with ONNX Runtime on its batch-free
twin (the same graph and weights before the batch dimension was fixed), with Q/DQ left
unfused so the int8 math is the reference math TensorRT implements. Where ``tensorrt`` is
importable and a CUDA GPU is present, the engine is built too, then verified, scored and
timed on this GPU; otherwise the report says why, and the device builds it with
``edgeprune trt-build`` or ``build_engine.sh``.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import onnx
import torch

from edgeprune.backends.base import (
    Artifact,
    Inputs,
    LowerRequest,
    check_palettize,
    check_precision,
    dense_storage_note,
    register_backend,
)
from edgeprune.backends.onnx_tools import runtime as onnx_runtime
from edgeprune.backends.onnx_tools.export import export_onnx
from edgeprune.backends.onnx_tools.quantize import quantize_int8, tensorrt_int8_config
from edgeprune.backends.tensorrt.bundle import (
    BUNDLE_DIR,
    ONNX_FILE,
    REFERENCE,
    BundleSpec,
    check_tensorrt_operators,
    dynamic_dims,
    fix_batch,
    sha256,
    tensor_specs,
    trtexec_command,
    write_manifest,
    write_reference,
)
from edgeprune.backends.tensorrt.engine import EngineRunner, build_bundle, tensorrt_unavailable
from edgeprune.errors import EdgepruneError, UnsupportedError
from edgeprune.measurements import Latency
from edgeprune.uploads import UploadModel
from edgeprune.verify import Verification, structural


@register_backend("tensorrt")
class TensorRTBackend:
    """Lowers to a TensorRT bundle folder (``tensorrt/``) and, where it can, to an engine.

    Stateless: the batch-free twin and the engine the predictor runs are named in the Artifact.
    """

    name = "tensorrt"
    precisions = frozenset({"fp32", "fp16", "int8"})
    # 2:4 zeros become sparse tensor-core tactics (BuilderFlag.SPARSE_WEIGHTS); other zeros stay dense math.
    sparsity_storage = frozenset({"structured", "nm"})
    computes_int8 = True  # explicit Q/DQ become int8 tensor-core kernels

    def check(self, request: LowerRequest) -> None:
        check_precision(self, request)
        check_palettize(self, request)
        if request.sparsity == "nm" and tuple(request.nm) != (2, 4):
            raise UnsupportedError(
                f"TensorRT's sparse tensor cores take 2:4 only, not {request.nm[0]}:{request.nm[1]}; use --nm 2:4"
            )

    def preflight(self, model: torch.nn.Module, example_inputs: Inputs, request: LowerRequest) -> None:
        """Exports the dense model and checks its operators (the build calls this before pruning)."""
        with tempfile.TemporaryDirectory(prefix="edgeprune-trt-") as tmp:
            probe = export_onnx(model, example_inputs, Path(tmp) / "preflight.onnx")
            check_tensorrt_operators(onnx.load(str(probe)))

    def lower(self, model: torch.nn.Module, example_inputs: Inputs, request: LowerRequest, out_dir: Path) -> Artifact:
        bundle = out_dir / BUNDLE_DIR
        bundle.mkdir(parents=True, exist_ok=True)
        scratch_dir = tempfile.TemporaryDirectory(prefix="edgeprune-trt-")  # the twin is not shipped
        scratch = Path(scratch_dir.name)
        twin = export_onnx(model, example_inputs, scratch / "batch_free.onnx")
        check_tensorrt_operators(onnx.load(str(twin)))
        if request.precision == "int8":
            twin = quantize_int8(twin, scratch / "batch_free_int8.onnx", request.calibration, tensorrt_int8_config())
        batch = int(example_inputs[0].shape[0])
        onnx_path = fix_batch(twin, bundle / ONNX_FILE, batch)
        graph = onnx.load(str(onnx_path))  # a ModelProto
        check_tensorrt_operators(graph)  # quantization's graph optimizations must not add contrib operators
        if dynamic_dims(graph):
            raise EdgepruneError(f"the TensorRT ONNX still has dynamic dimensions on {dynamic_dims(graph)}")
        names = [i["name"] for i in tensor_specs(graph, "inputs")]
        write_reference(bundle / REFERENCE, model, request.calibration or [tuple(example_inputs)], batch, names)
        spec = BundleSpec(
            precision=request.precision, sparsity="2:4" if request.sparsity == "nm" else "none",
            onnx_sha256=sha256(onnx_path), inputs=tensor_specs(graph, "inputs"),
            outputs=tensor_specs(graph, "outputs"), profile=request.profile.name, tolerance=request.precision,
        )
        manifest, script = write_manifest(bundle, spec)
        ops = Counter(n.op_type for n in graph.graph.node)
        details = {
            "trtexec": " ".join(trtexec_command(spec)),
            "static_shapes": {v["name"]: v["shape"] for v in [*spec.inputs, *spec.outputs]},
            "qdq_nodes": {"QuantizeLinear": ops.get("QuantizeLinear", 0), "DequantizeLinear": ops.get("DequantizeLinear", 0)},
            "onnx_sha256": spec.onnx_sha256,
        }
        note = dense_storage_note(self, request)
        notes = [note] if note else []
        artifact = Artifact(
            format=self.name, precision=request.precision, path=bundle,
            files=[onnx_path, script, manifest, bundle / REFERENCE], measure_path=None, notes=notes, details=details,
            evaluated_on=("the bundle's ONNX (batch dimension free) under ONNX Runtime"
                          + (" with Q/DQ unfused" if request.precision == "int8" else "")
                          + "; the engine itself is built and checked on the device"),
            reference=twin, scratch=scratch_dir,
        )
        reason = tensorrt_unavailable()
        if reason is not None:
            notes.append(f"TensorRT engine not built here: {reason}. On the device, run "
                         f"`edgeprune trt-build {BUNDLE_DIR}/` or `bash {BUNDLE_DIR}/build_engine.sh`")
            return artifact
        result = build_bundle(bundle, spec)
        details["engine"] = result
        notes.append(result["sparsity"])
        if "latency" in result:
            artifact.engine = Path(result["engine"])
            artifact.latency = Latency.from_dict({**result["latency"], "batch": batch})
            artifact.evaluated_on = "artifact"
        return artifact

    def predictor(self, artifact: Artifact) -> Callable[..., torch.Tensor] | None:
        if artifact.engine is not None:
            return EngineRunner(artifact.engine)
        return onnx_runtime.predictor(artifact.reference, reference=True) if artifact.reference else None

    def upload(self, artifact: Artifact) -> UploadModel:
        """Returns the engine built here, or the bundle's ONNX for the device to build its own engine.

        Engines do not move between GPUs or TensorRT versions: the agent builds one with the
        same builder and cache as ``edgeprune trt-build``.
        """
        if artifact.engine is not None:
            return UploadModel("artifact", "engine", artifact.engine, "tensorrt", artifact.precision)
        onnx_file = next((Path(p) for p in [artifact.path, artifact.measure_path, *artifact.files]
                          if p is not None and Path(p).suffix == ".onnx"), None)
        if onnx_file is None:
            raise UnsupportedError("the TensorRT artifact has neither an engine nor an ONNX file to send to the device")
        return UploadModel("artifact", "onnx", onnx_file, "tensorrt", artifact.precision)

    def cannot_run_reason(self) -> str | None:
        return tensorrt_unavailable()

    def verify_structure(self, artifact: Artifact, model: torch.nn.Module, request: LowerRequest) -> Verification:
        """Returns the bundle's structural check: static shapes, Q/DQ for int8, an intact recipe."""
        graph = onnx.load(str(artifact.path / ONNX_FILE))
        ops = Counter(n.op_type for n in graph.graph.node)
        checks = [("the ONNX has static input and output shapes", not dynamic_dims(graph)),
                  ("build_engine.sh and bundle.json are present",
                   (artifact.path / "build_engine.sh").exists() and (artifact.path / "bundle.json").exists())]
        if request.precision == "int8":
            checks.append(("the ONNX carries explicit Q/DQ", ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] > 0))
        return structural(checks)
