"""ONNX backend: fp32, fp16 and int8 artifacts of the digits CNN and a ViT, checked on ONNX Runtime."""

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from edgeprune.backends import LowerRequest, get_backend
from edgeprune.backends.onnx_tools.export import export_onnx
from edgeprune.backends.onnx_tools.fusion import inspect_kernels, int8_fusion_notes
from edgeprune.errors import UnsupportedError
from edgeprune.profile import load_profile
from edgeprune.target import BuildOptions
from edgeprune.verify import TOLERANCE, verify_numeric

from backend_models import digits, few, torch_accuracy, vit
from conftest import DIGITS, build_report, run_cli
from examples_digits import accuracy_of_onnx

X86 = load_profile("x86-avx2")


def lower(workload, precision, tmp_path, profile=X86, **options):
    tmp_path.mkdir(parents=True, exist_ok=True)
    backend = get_backend("onnx")
    request = LowerRequest(precision=precision, profile=profile, calibration=workload.calibration_batches(),
                           options=options)
    backend.check(request)
    artifact = backend.lower(workload.model, tuple(workload.example_inputs), request, tmp_path)
    return artifact, backend.predictor(artifact)


def optimized_ops(path, tmp_path) -> Counter:
    """The operator types ONNX Runtime runs for a file, read from its own optimized graph."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(tmp_path / "ort_optimized.onnx")
    options.log_severity_level = 3
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return Counter(n.op_type for n in onnx.load(str(tmp_path / "ort_optimized.onnx")).graph.node)


@pytest.fixture(scope="module")
def fp32_digits(tmp_path_factory):
    return lower(digits(), "fp32", tmp_path_factory.mktemp("fp32"))


def test_fp32_digits_matches_pytorch(fp32_digits):
    artifact, predict = fp32_digits
    check = verify_numeric(digits().model, predict, few(digits()), "fp32")
    assert check.passed and check.max_abs_diff < 1e-3 and check.agreement == 1.0
    assert artifact.measure_path == artifact.path and artifact.notes == []


def test_int8_digits_build_is_small_fused_accurate_and_timed_against_fp32(fp32_digits, tmp_path):
    # U8S8 for the AVX2 profile, timed here at the user's word: this CPU need not be that device
    report = build_report(BuildOptions(model=str(DIGITS), profile="x86-avx2", output=tmp_path / "int8", quantize="int8",
                                measure_here=True))
    assert report["passed"], report["notes"]
    art = report["artifact"]
    assert art["format"] == "onnx" and art["precision"] == "int8" and art["verified"]["passed"]
    assert art["size_bytes"] <= 0.40 * fp32_digits[0].size_bytes
    model = onnx.load(art["path"])
    ops = Counter(n.op_type for n in model.graph.node)
    assert ops["QuantizeLinear"] >= 8 and ops["DequantizeLinear"] >= 8 and ops["Conv"] == 7  # QDQ format
    int8_weights = [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) >= 2]
    assert len(int8_weights) == 8  # every conv and the classifier, stored as int8
    # ONNX Runtime fused every Q/DQ group into integer kernels: no float conv is left.
    fused = optimized_ops(art["path"], tmp_path)
    assert fused["QLinearConv"] == 7 and fused["QGemm"] == 1 and fused["Conv"] == 0
    assert art["details"]["kernels"]["unfused"] == [] and not any("fused" in n for n in report["notes"])
    quant = art["details"]["quantization"]
    assert (quant["mode"], quant["activation"], quant["weight"], quant["per_channel"]) == ("static", "u8", "s8", True)
    acc = report["accuracy"]
    assert acc["evaluated_on"] == "artifact" and acc["drop"] <= 0.02
    assert abs(accuracy_of_onnx(art["path"]) - acc["pruned"]) < 1e-9
    lat = report["latency"]
    assert lat["source"] == "measured" and lat["baseline_median_ms"] > 0 and lat["median_ms"] > 0
    assert lat["measure_here"] is True and "--measure-here" in lat["stands_in"]
    assert lat["speedup"] == pytest.approx(lat["baseline_median_ms"] / lat["median_ms"], rel=1e-3)


def test_fp16_digits_has_fp16_weights_half_the_size_and_stays_within_tolerance(tmp_path):
    w = digits()
    artifact, predict = lower(w, "fp16", tmp_path)
    model = onnx.load(str(artifact.path))
    big = [i for i in model.graph.initializer if len(i.dims) >= 2]
    assert big and all(i.data_type == onnx.TensorProto.FLOAT16 for i in big)
    assert [i.type.tensor_type.elem_type for i in model.graph.input] == [onnx.TensorProto.FLOAT]
    assert 0.45 <= artifact.details["size_vs_fp32"] <= 0.55
    check = verify_numeric(w.model, predict, few(w), "fp16")
    assert check.passed and check.rel_diff <= TOLERANCE["fp16"][0] and check.agreement == 1.0
    # This CPU has no fp16 convolution kernels: the report must say the model runs in fp32 here.
    assert artifact.details["kernels"]["fp16_kernels"] == 0 and any("fp32" in n for n in artifact.notes)


def test_vit_int8_quantizes_its_matmuls_dynamically_and_keeps_accuracy(tmp_path):
    w = vit()
    fp32, predict32 = lower(w, "fp32", tmp_path / "fp32")
    int8, predict8 = lower(w, "int8", tmp_path / "int8")
    assert int8.details["quantization"]["mode"] == "dynamic"
    assert int8.path.stat().st_size <= 0.40 * fp32.path.stat().st_size
    kernels = int8.details["kernels"]["quantized_kernels"]
    assert kernels.get("DynamicQuantizeMatMul", 0) + kernels.get("MatMulInteger", 0) >= 8  # qkv, proj, 2 mlp x 2 blocks
    assert optimized_ops(int8.path, tmp_path)["DynamicQuantizeMatMul"] >= 8
    assert verify_numeric(w.model, predict32, few(w), "fp32").passed
    check = verify_numeric(w.model, predict8, few(w), "int8")
    assert check.passed and check.agreement >= 0.95
    dense = torch_accuracy("vit")
    assert dense >= 0.95 and dense - w.evaluate(predict8) <= 0.02


def test_vit_fp16_stays_within_tolerance(tmp_path):
    w = vit()
    artifact, predict = lower(w, "fp16", tmp_path)
    check = verify_numeric(w.model, predict, few(w), "fp16")
    assert check.passed and check.rel_diff <= TOLERANCE["fp16"][0]


def test_int8_mode_can_be_forced_static_for_a_transformer(tmp_path):
    w = vit()
    artifact, predict = lower(w, "int8", tmp_path, int8_mode="static")
    assert artifact.details["quantization"]["mode"] == "static"
    assert sum(artifact.details["kernels"]["quantized_kernels"].values()) > 0
    assert verify_numeric(w.model, predict, few(w), "int8").passed


def test_a_qdq_model_ort_cannot_fuse_is_reported(tmp_path):
    # 16-bit activations have no integer Conv kernel in ONNX Runtime's CPU provider: each
    # Q/DQ group stays DequantizeLinear -> fp32 Conv, and the check must say so.
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    w = digits()
    fp32 = export_onnx(w.model, w.example_inputs, tmp_path / "fp32.onnx")

    class Reader:
        def __init__(self):
            self.batches = iter(w.calibration_batches()[:2])

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {"input": batch[0].numpy()}

    qdq16 = tmp_path / "qdq16.onnx"
    quantize_static(str(fp32), str(qdq16), Reader(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt16,
                    weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                    extra_options={"UseQDQContribOps": True})
    report = inspect_kernels(qdq16)
    assert report.quantized_count == 0 and len(report.unfused) >= 7
    notes = int8_fusion_notes(report)
    assert len(notes) == 1 and "slower than fp32" in notes[0]
    assert int8_fusion_notes(inspect_kernels(fp32)) != []  # a float model has no integer kernels either


def test_requests_the_onnx_backend_cannot_serve_fail_before_any_work():
    backend = get_backend("onnx")
    vnni = load_profile("x86-avx512-vnni")
    with pytest.raises(UnsupportedError, match="profile x86-avx512-vnni does not run fp16"):
        backend.check(LowerRequest(precision="fp16", profile=vnni))
    with pytest.raises(UnsupportedError, match="no palettized"):
        backend.check(LowerRequest(precision="fp32", profile=X86, palettize=4))
    with pytest.raises(UnsupportedError, match="int8_mode"):
        backend.check(LowerRequest(precision="int8", profile=X86, options={"int8_mode": "fast"}))


class Erfinv(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(16, 16)

    def forward(self, x):
        return torch.erfinv(torch.tanh(self.fc(x)) * 0.9)


def test_an_operator_onnx_cannot_export_is_named(tmp_path):
    with pytest.raises(UnsupportedError, match="erfinv") as info:
        export_onnx(Erfinv().eval(), (torch.randn(2, 16),), tmp_path / "m.onnx")
    assert "\n" not in str(info.value) and not (tmp_path / "m.onnx").exists()


def test_cli_reports_an_unlowerable_operator_before_pruning_with_exit_2(tmp_path):
    workload = tmp_path / "erfinv_model.py"
    workload.write_text(
        "import torch\nimport edgeprune\n"
        "class M(torch.nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n        self.fc = torch.nn.Linear(16, 16)\n"
        "    def forward(self, x):\n        return torch.erfinv(torch.tanh(self.fc(x)) * 0.9)\n"
        "def workload():\n    return edgeprune.Workload(model=M(), example_inputs=(torch.randn(1, 16),))\n"
    )
    # --strategy unstructured: pruning would run first, so the operator must be caught before it.
    proc = run_cli("build", str(workload), "--profile", "x86-avx2", "--strategy", "unstructured", "--sparsity", "0.5",
                   "-o", str(tmp_path / "out"))
    assert proc.returncode == 2, proc.stderr
    # Had pruning run first, its own "not available yet" error would have come instead.
    assert "erfinv" in proc.stderr and "Traceback" not in proc.stderr
    assert "count parameters" not in proc.stderr and not (tmp_path / "out").exists()


def test_export_cache_keys_on_weights(tmp_path):
    w = digits()
    first = export_onnx(w.model, w.example_inputs, tmp_path / "a.onnx")
    again = export_onnx(w.model, w.example_inputs, tmp_path / "b.onnx")
    assert first.read_bytes() == again.read_bytes()
    changed = type(w.model)()
    changed.load_state_dict(w.model.state_dict())
    with torch.no_grad():
        changed.classifier.weight.mul_(2)
    other = export_onnx(changed.eval(), w.example_inputs, tmp_path / "c.onnx")
    weights = {i.name: i for i in onnx.load(str(other)).graph.initializer}
    original = {i.name: i for i in onnx.load(str(first)).graph.initializer}
    differs = [n for n in weights if n in original and not np.array_equal(
        onnx.numpy_helper.to_array(weights[n]), onnx.numpy_helper.to_array(original[n]))]
    assert differs  # the changed weights were exported, not the cached file


def test_a_residual_cnn_quantizes_to_a_fully_fused_int8_graph_and_unfused_layers_are_charged_as_fp32(tmp_path):
    # Every Conv of a ResNet (residual sums feeding the next block's first conv, strided 1x1
    # shortcuts, a grouped conv) must become an integer kernel in ONNX Runtime's own graph; with
    # S8 activations ONNX Runtime leaves those convolutions fp32 behind a DequantizeLinear, and
    # the estimate must charge them as fp32 plus their (de)quantizations, not as int8.
    from edgeprune.backends.onnx_tools.fusion import unfused_nodes
    from edgeprune.backends.onnx_tools.quantize import Int8Config, quantize_int8
    from edgeprune.measure.estimate import estimate_onnx

    from zoo import calibration, resnet

    model, inputs = resnet()
    backend = get_backend("onnx")
    request = LowerRequest(precision="int8", profile=X86, calibration=calibration(inputs))
    artifact = backend.lower(model, inputs, request, tmp_path)
    fp32 = export_onnx(model, inputs, tmp_path / "fp32.onnx")
    convs = sum(n.op_type == "Conv" for n in onnx.load(str(fp32)).graph.node)
    assert convs == 13
    kernels = artifact.details["kernels"]
    assert kernels["quantized_kernels"].get("QLinearConv") == convs and kernels["unfused"] == []
    assert kernels["behind_dequantize"] == []  # what the build's estimate takes as known, not asked again
    assert optimized_ops(artifact.path, tmp_path)["QLinearConv"] == convs
    assert not any("unfused" in note for note in artifact.notes) and unfused_nodes(artifact.path) == frozenset()

    s8 = quantize_int8(fp32, tmp_path / "s8.onnx", calibration(inputs), Int8Config(activation="s8"))
    left = unfused_nodes(s8)
    assert sum("Conv" in name for name in left) >= 4  # each block's first conv and the shortcuts
    shapes = [tuple(inputs[0].shape)]
    as_int8 = estimate_onnx(s8, shapes, X86)
    as_run = estimate_onnx(s8, shapes, X86, unfused=left)
    fused = estimate_onnx(artifact.path, shapes, X86)
    assert as_int8.unfused_layers == 0 and as_run.unfused_layers == len(left)
    charged = {k.name: k for k in as_run.kernels}
    assert all(charged[name].precision == "fp32" for name in left if name in charged)
    assert sum(k.ops == ("DequantizeLinear",) for k in as_run.kernels) > sum(
        k.ops == ("DequantizeLinear",) for k in as_int8.kernels)
    assert as_run.ms > as_int8.ms and as_run.ms > fused.ms
