"""Core ML backend: packages of the digits CNN and a ViT, their weight storage read from the spec."""

import platform
from collections import Counter

import pytest
import torch

from edgeprune.backends import LowerRequest, get_backend
from edgeprune.errors import UnsupportedError
from edgeprune.profile import load_profile
from edgeprune.target import BuildOptions
from edgeprune.verify import verify_numeric

from backend_models import digits, few, magnitude_prune, vit
from conftest import DIGITS, build_report

ct = pytest.importorskip("coremltools", reason="the coreml extra is not installed")

IPHONE = load_profile("iphone-15-pro")  # iOS17
IOS18 = IPHONE.model_copy(update={"name": "iphone-ios18", "min_deployment_target": "iOS18"})
ON_MAC = platform.system() == "Darwin"


def lower(model, request, folder, inputs=None):
    folder.mkdir(parents=True, exist_ok=True)
    backend = get_backend("coreml")
    backend.check(request)
    artifact = backend.lower(model, tuple(inputs or digits().example_inputs), request, folder)
    return artifact, backend.verify_structure(artifact, model, request)


def program(path):
    """Op types and the tensor operands of each constexpr op, read with coremltools directly."""
    from coremltools.proto import MIL_pb2

    spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    function = spec.mlProgram.functions["main"]
    ops = list(function.block_specializations[function.opset].operations)

    def operands(op):
        found = {k: v.type.tensorType for k, v in op.attributes.items() if v.type.HasField("tensorType")}
        found.update({k: a.arguments[0].value.type.tensorType for k, a in op.inputs.items()
                      if a.arguments and a.arguments[0].HasField("value")})
        return {k: (MIL_pb2.DataType.Name(t.dataType), [d.constant.size for d in t.dimensions]) for k, t in found.items()}

    return spec, Counter(op.type for op in ops), [(op.type, operands(op)) for op in ops if op.type.startswith("constexpr")]


def nonzeros(model):
    return sum(int(torch.count_nonzero(m.weight.half())) for m in model.modules()
               if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) and m.weight.numel() > 2048)


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    return lower(digits().model, LowerRequest("fp16", IPHONE), tmp_path_factory.mktemp("dense"))


@pytest.fixture(scope="module")
def pruned_08():
    return magnitude_prune(digits().model, 0.8)


def test_dense_fp16_package_loads_for_ios17_and_computes_in_fp16(dense):
    artifact, verification = dense
    spec, ops, constexpr = program(artifact.path)
    assert spec.WhichOneof("Type") == "mlProgram" and spec.specificationVersion == 8  # iOS17
    assert ops["conv"] == 7 and ops["linear"] == 1 and constexpr == []
    assert verification.method == "structural" and verification.passed, verification.detail
    assert "computes in float16" in verification.detail
    assert artifact.details["captured_with"] == "torch.export"


def test_unstructured_80_percent_is_stored_sparse_and_at_least_1_5x_smaller(dense, pruned_08, tmp_path):
    artifact, verification = lower(pruned_08, LowerRequest("fp16", IPHONE, sparsity="unstructured"), tmp_path)
    assert verification.passed, verification.detail
    assert dense[0].size_bytes / artifact.size_bytes >= 1.5
    _, ops, constexpr = program(artifact.path)
    assert ops["constexpr_sparse_to_dense"] == 7
    stored = sum(shape[0] for kind, operands in constexpr for name, (_, shape) in operands.items() if name == "nonzero_data")
    assert stored == nonzeros(pruned_08)  # the model's own non-zeros, nothing more, nothing lost
    assert artifact.details["program"]["sparsity_of_sparse_weights"] == pytest.approx(0.8, abs=0.01)


def test_int8_build_stores_int8_weights_verifies_structurally_and_labels_what_it_could_not_run(tmp_path):
    report = build_report(BuildOptions(model=str(DIGITS), profile="iphone-15-pro", output=tmp_path / "b", quantize="int8"))
    art = report["artifact"]
    assert report["passed"] and art["format"] == "coreml" and art["precision"] == "int8"
    _, ops, constexpr = program(art["path"])
    assert ops["constexpr_affine_dequantize"] == 7
    assert all(operands["quantized_data"][0] == "INT8" for _, operands in constexpr)
    assert art["verified"]["method"] == ("numeric" if ON_MAC else "structural") and art["verified"]["passed"]
    if not ON_MAC:
        assert "stored linear at 8 bits" in art["verified"]["detail"]
        assert report["latency"]["source"] != "measured" and report["latency"].get("note")
        assert "pruned" not in report["accuracy"] and "Apple hardware" in report["accuracy"]["note"]


def test_palettized_weights_carry_the_asked_bit_width(dense, tmp_path):
    bits = 6  # 4 bits: see the joint test below
    artifact, verification = lower(digits().model, LowerRequest("fp16", IPHONE, palettize=bits), tmp_path)
    assert verification.passed, verification.detail
    _, ops, constexpr = program(artifact.path)
    assert ops["constexpr_lut_to_dense"] == 7
    assert {operands["lut"][1][0] for _, operands in constexpr} == {2**bits}  # iOS17: a 2^bits-entry table
    assert artifact.size_bytes < dense[0].size_bytes * (bits / 16 + 0.05)


def test_joint_sparse_palettized_needs_ios18_and_stores_2_4_zeros_with_4_bit_tables(tmp_path):
    nm = magnitude_prune(digits().model, 0.5, nm=(2, 4))
    with pytest.raises(UnsupportedError, match="iOS18"):
        get_backend("coreml").check(LowerRequest("fp16", IPHONE, sparsity="nm", palettize=4))
    artifact, verification = lower(nm, LowerRequest("fp16", IOS18, sparsity="nm", palettize=4), tmp_path)
    assert verification.passed, verification.detail
    spec, ops, constexpr = program(artifact.path)
    assert spec.specificationVersion == 9 and ops["constexpr_lut_to_sparse"] == 7
    joint = [operands for kind, operands in constexpr if kind == "constexpr_lut_to_sparse"]
    assert all(o["indices_nonzero_data"][0] == "UINT4" and o["lut"][1][-2] == 16 for o in joint)
    assert sum(o["indices_nonzero_data"][1][0] for o in joint) == nonzeros(nm)


def test_structural_check_fails_when_the_storage_is_not_what_was_asked(dense, pruned_08):
    artifact, _ = dense
    check = get_backend("coreml").verify_structure(artifact, pruned_08, LowerRequest("fp16", IPHONE, sparsity="unstructured"))
    assert not check.passed and check.detail.startswith("FAILED:") and "sparse" in check.detail


def test_vit_converts_and_stores_fp16_and_int8_weights(tmp_path):
    w = vit()
    for precision, encoding in (("fp16", "dense"), ("int8", "linear")):
        artifact, verification = lower(w.model, LowerRequest(precision, IPHONE), tmp_path / precision,
                                       w.example_inputs)
        assert verification.passed, verification.detail
        _, ops, _ = program(artifact.path)
        assert ops["linear"] + ops["matmul"] >= 12 and ops["softmax"] == 2
        assert artifact.details["program"]["weights"].get(encoding, 0) >= 8


def test_requests_core_ml_cannot_serve_fail_before_any_work():
    backend = get_backend("coreml")
    old = IPHONE.model_copy(update={"min_deployment_target": "iOS15"})
    with pytest.raises(UnsupportedError, match="iOS16"):
        backend.check(LowerRequest("int8", old))
    with pytest.raises(UnsupportedError, match="4, 6, 8"):
        backend.check(LowerRequest("fp16", IPHONE, palettize=5))
    with pytest.raises(UnsupportedError, match="not both"):
        backend.check(LowerRequest("int8", IPHONE, palettize=4))
    with pytest.raises(UnsupportedError, match="does not run fp32"):
        backend.check(LowerRequest("fp32", IPHONE))


class Determinant(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(16, 16)

    def forward(self, x):
        return torch.linalg.det(self.fc(x).reshape(-1, 4, 4))


def test_an_operator_core_ml_cannot_lower_is_named_before_conversion(tmp_path):
    backend = get_backend("coreml")
    request = LowerRequest("fp16", IPHONE)
    with pytest.raises(UnsupportedError, match="linalg_det"):
        backend.preflight(Determinant().eval(), (torch.randn(1, 16),), request)
    with pytest.raises(UnsupportedError, match="linalg_det"):
        backend.lower(Determinant().eval(), (torch.randn(1, 16),), request, tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not ON_MAC, reason="Core ML predicts only on macOS")
def test_on_macos_the_package_is_verified_numerically(dense):
    artifact, _ = dense
    predict = get_backend("coreml").predictor(artifact)
    check = verify_numeric(digits().model, predict, few(digits()), "fp16")
    assert check.method == "numeric" and check.passed


class DataDependent(torch.nn.Module):
    """A branch on a tensor's value: torch.export refuses it, tracing records the branch taken."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(64, 64)

    def forward(self, x):
        y = self.fc(x)
        return torch.relu(y) if float(y.sum()) > -1e9 else -y


def test_a_model_torch_export_cannot_capture_is_converted_from_a_trace(tmp_path):
    model = DataDependent().eval()
    request = LowerRequest("fp16", IPHONE)
    backend = get_backend("coreml")
    artifact = backend.lower(model, (torch.randn(1, 64),), request, tmp_path)
    assert artifact.details["captured_with"] == "torch.jit.trace"
    check = backend.verify_structure(artifact, model, request)
    assert check.passed, check.detail
    spec, ops, _ = program(artifact.path)
    assert [i.name for i in spec.description.input] == ["input"] and ops["relu"] == 1
