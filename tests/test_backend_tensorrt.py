"""TensorRT backend: hand-off bundles of the digits CNN and a ViT; engines only where TensorRT runs."""

import json
import shlex
import subprocess
from collections import Counter

import numpy as np
import onnx
import pytest

from edgeprune.backends import LowerRequest, get_backend
from edgeprune.backends.tensorrt.bundle import BundleSpec, read_bundle, sha256, trtexec_command
from edgeprune.backends.tensorrt.engine import build_bundle, cache_key, tensorrt_unavailable
from edgeprune.errors import InputError, UnsupportedError
from edgeprune.profile import load_profile
from edgeprune.target import BuildOptions
from edgeprune.verify import verify_numeric

from backend_models import digits, few, magnitude_prune, vit
from conftest import DIGITS, build_report, run_cli

JETSON = load_profile("jetson-orin-nano")
NO_TENSORRT = tensorrt_unavailable()


def lower(workload, request, folder, model=None):
    folder.mkdir(parents=True, exist_ok=True)
    backend = get_backend("tensorrt")
    backend.check(request)
    artifact = backend.lower(model or workload.model, tuple(workload.example_inputs), request, folder)
    return backend, artifact


def static(model: onnx.ModelProto) -> bool:
    values = [*model.graph.input, *model.graph.output]
    return bool(values) and all(d.HasField("dim_value") for v in values for d in v.type.tensor_type.shape.dim)


def recipe(bundle) -> list[str]:
    """The trtexec arguments of build_engine.sh (its last line)."""
    script = (bundle / "build_engine.sh").read_text()
    assert subprocess.run(["bash", "-n", str(bundle / "build_engine.sh")]).returncode == 0  # parses as bash
    return shlex.split(script.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def int8_build(tmp_path_factory):
    out = tmp_path_factory.mktemp("trt") / "digits"
    return out, build_report(BuildOptions(model=str(DIGITS), profile="jetson-orin-nano", output=out, quantize="int8"))


def test_int8_bundle_has_static_qdq_onnx_a_runnable_recipe_and_a_checked_accuracy(int8_build):
    out, report = int8_build
    bundle = out / "tensorrt"
    assert report["passed"] and report["artifact"]["path"] == str(bundle)
    assert sorted(p.name for p in bundle.iterdir()) == ["build_engine.sh", "bundle.json", "model.onnx", "reference.npz"]
    model = onnx.load(str(bundle / "model.onnx"))
    assert static(model) and [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == [1, 1, 32, 32]
    ops = Counter(n.op_type for n in model.graph.node)
    assert ops["QuantizeLinear"] >= 8 and ops["DequantizeLinear"] >= 16 and ops["Conv"] == 7
    # TensorRT takes symmetric int8 Q/DQ only: every zero point is an int8 zero, biases stay float.
    inits = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            zero = inits[node.input[2]]
            assert zero.data_type == onnx.TensorProto.INT8 and not onnx.numpy_helper.to_array(zero).any()
    float_biases = [inits[n.input[2]] for n in model.graph.node if n.op_type == "Conv" and len(n.input) > 2]
    assert all(b.data_type == onnx.TensorProto.FLOAT for b in float_biases)
    args = recipe(bundle)
    assert args[:1] == ['"$TRTEXEC"'] or args[0] == "$TRTEXEC"
    assert {"--onnx=model.onnx", "--saveEngine=model.engine", "--int8", "--fp16", "--timingCacheFile=timing.cache"} <= set(args)
    assert "--sparsity=enable" not in args
    folder, spec = read_bundle(out)
    assert folder == bundle and spec.precision == "int8" and spec.onnx_sha256 == sha256(bundle / "model.onnx")
    verified = report["artifact"]["verified"]
    assert verified["method"] == "numeric" and verified["passed"] and "ONNX Runtime" in verified["subject"]
    acc = report["accuracy"]
    assert acc["drop"] <= 0.02 and "device" in acc["evaluated_on"]
    if NO_TENSORRT:
        assert report["latency"]["source"] == "estimated" and report["latency"]["median_ms"] > 0
        assert report["latency"].get("note")
        assert any("trt-build" in n and "not built here" in n for n in report["notes"])


def test_reference_outputs_in_the_bundle_are_pytorchs(int8_build):
    out, _ = int8_build
    data = np.load(out / "tensorrt" / "reference.npz")
    inputs, outputs = data["input:input"], data["output"]
    assert inputs.shape == (8, 1, 1, 32, 32) and outputs.shape == (8, 1, 10)
    import torch

    with torch.no_grad():
        want = digits().model(torch.from_numpy(inputs.reshape(8, 1, 32, 32))).numpy()
    assert np.allclose(want, outputs.reshape(8, 10), atol=1e-5)


def test_fp16_bundle_keeps_fp32_onnx_and_asks_trtexec_for_fp16(tmp_path):
    w = digits()
    backend, artifact = lower(w, LowerRequest("fp16", JETSON, calibration=few(w)), tmp_path)
    bundle = artifact.path
    model = onnx.load(str(bundle / "model.onnx"))
    assert static(model) and not any(n.op_type == "QuantizeLinear" for n in model.graph.node)
    args = recipe(bundle)
    assert "--fp16" in args and "--int8" not in args
    assert backend.verify_structure(artifact, w.model, LowerRequest("fp16", JETSON)).passed
    check = verify_numeric(w.model, backend.predictor(artifact), few(w), "fp16", subject=artifact.evaluated_on)
    assert check.passed and check.agreement == 1.0


def test_vit_2_4_bundle_enables_sparse_tactics_and_verifies(tmp_path):
    w = vit()
    sparse = magnitude_prune(w.model, 0.5, nm=(2, 4))
    request = LowerRequest("fp16", JETSON, calibration=few(w), sparsity="nm", nm=(2, 4))
    backend, artifact = lower(w, request, tmp_path, model=sparse)
    args = recipe(artifact.path)
    assert "--sparsity=enable" in args and "--fp16" in args
    assert static(onnx.load(str(artifact.path / "model.onnx")))
    assert json.loads((artifact.path / "bundle.json").read_text())["sparsity"] == "2:4"
    assert verify_numeric(sparse, backend.predictor(artifact), few(w), "fp16").passed


def test_vit_int8_bundle_puts_qdq_on_its_matmuls(tmp_path):
    w = vit()
    backend, artifact = lower(w, LowerRequest("int8", JETSON, calibration=w.calibration_batches()), tmp_path)
    model = onnx.load(str(artifact.path / "model.onnx"))
    producers = {o: n for n in model.graph.node for o in n.output}
    matmuls = [n for n in model.graph.node if n.op_type in ("MatMul", "Gemm")]
    fed_by_dq = [n for n in matmuls if all(producers.get(i) is not None and producers[i].op_type == "DequantizeLinear"
                                           for i in n.input[:2])]
    assert static(model) and len(fed_by_dq) >= 9  # qkv, proj, 2 MLP per block, the head (and attention products)
    assert {n.domain for n in model.graph.node} <= {""}  # standard operators only: no contrib ops for TensorRT
    check = verify_numeric(w.model, backend.predictor(artifact), few(w), "int8")
    assert check.passed and check.agreement >= 0.95


def test_requests_tensorrt_cannot_serve_fail_before_any_work():
    backend = get_backend("tensorrt")
    with pytest.raises(UnsupportedError, match="2:4 only"):
        backend.check(LowerRequest("fp16", JETSON, sparsity="nm", nm=(4, 8)))
    with pytest.raises(UnsupportedError, match="palettized"):
        backend.check(LowerRequest("fp16", JETSON, palettize=4))


def test_trtexec_flags_follow_the_request():
    spec = BundleSpec(precision="fp32", sparsity="none", onnx_sha256="0" * 64)
    assert not {"--fp16", "--int8", "--sparsity=enable"} & set(trtexec_command(spec))
    sparse_int8 = BundleSpec(precision="int8", sparsity="2:4", onnx_sha256="0" * 64)
    assert {"--fp16", "--int8", "--sparsity=enable"} <= set(trtexec_command(sparse_int8))


def test_engine_cache_key_names_gpu_tensorrt_version_and_onnx():
    onnx = "ab" * 32
    key = cache_key("NVIDIA Jetson Orin Nano", "10.3.0", onnx, "int8", True)
    assert key.startswith("nvidia-jetson-orin-nano-trt10.3.0-abababababab-int8-sparse-")
    assert key != cache_key("NVIDIA A100-SXM4-80GB", "10.3.0", onnx, "int8", True)
    assert key != cache_key("NVIDIA Jetson Orin Nano", "10.4.0", onnx, "int8", True)
    # the agent's engines of a dynamic model are keyed by the shapes they were built for
    assert key != cache_key("NVIDIA Jetson Orin Nano", "10.3.0", onnx, "int8", True, [(1, 3, 32, 32)])
    assert cache_key("g", "10", onnx, "int8", True, [(1, 3)]) != cache_key("g", "10", onnx, "int8", True, [(4, 3)])


def test_a_modified_bundle_is_refused(int8_build, tmp_path):
    out, _ = int8_build
    copy = tmp_path / "bundle"
    copy.mkdir()
    for f in (out / "tensorrt").iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    (copy / "model.onnx").write_bytes((copy / "model.onnx").read_bytes() + b"\0")
    with pytest.raises(InputError, match="does not match the hash"):
        read_bundle(copy)


@pytest.mark.skipif(NO_TENSORRT is None, reason="TensorRT and a GPU are here: trt-build builds for real")
def test_trt_build_without_tensorrt_says_why_and_exits_2(int8_build):
    out, _ = int8_build
    proc = run_cli("trt-build", str(out / "tensorrt"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "cannot build the TensorRT engine here" in proc.stderr and "edgeprune[tensorrt]" in proc.stderr + NO_TENSORRT
    assert not (out / "tensorrt" / "model.engine").exists()


@pytest.mark.skipif(NO_TENSORRT is not None, reason=f"TensorRT engine build skipped: {NO_TENSORRT}")
def test_trt_build_builds_caches_and_verifies_the_engine(int8_build, tmp_path):
    out, _ = int8_build
    folder, spec = read_bundle(out)
    first = build_bundle(folder, spec, tmp_path / "cache")
    assert not first["cached"] and first["verified"]["passed"] and first["layers"] > 0
    assert first["latency"]["source"] == "measured" and first["latency"]["median_ms"] > 0
    again = build_bundle(folder, spec, tmp_path / "cache", measure=False)
    assert again["cached"] and again["engine"] == first["engine"]
