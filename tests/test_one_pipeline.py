"""The search, the sweep and the build measure a plan through one path: what a candidate records is what ships."""

import json

import pytest

import edgeprune
from edgeprune.host import Host

from conftest import DIGITS, ROOT, build_report, run_cli, stored_report

LOSS = ROOT / "tests" / "digits_loss.py"


def _chosen(report: dict) -> dict:
    label = report["search"]["chosen"]
    return [c for c in report["search"]["candidates"] if c["candidate"]["label"] == label][-1]  # scored last


def test_the_search_sizes_the_palettized_artifact_it_ships(tmp_path):
    # 4-bit palettized, the dense digits CNN is about 0.6 MB (2.4 MB in fp16): no pruning is needed
    pytest.importorskip("coremltools")
    proc = run_cli("build", str(DIGITS), "--profile", "iphone-15-pro", "--palettize", "4", "--max-size-mb", "1.0",
                   "--latency-budget-ms", "1000", "--quantize", "none", "-o", str(tmp_path / "b"), "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["search"]["chosen"] == "dense"
    assert _chosen(report)["size_bytes"] == report["artifact"]["size_bytes"] < 1.0e6


def test_an_int8_tensorrt_search_scores_the_quantized_artifact(tmp_path):
    proc = run_cli("build", str(LOSS), "--profile", "jetson-orin-nano", "--format", "tensorrt", "--quantize", "int8",
                   "--latency-budget-ms", "1000", "-o", str(tmp_path / "b"), "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    accuracy = report["accuracy"]
    assert accuracy["pruned"] != accuracy["baseline"]  # int8 moves the loss: the metric can see quantization
    assert _chosen(report)["metric"] == pytest.approx(accuracy["pruned"], rel=1e-9)


def test_the_search_takes_a_backends_own_timing(tmp_path):
    # A backend that times its artifact on its own runtime (as TensorRT does where a GPU is):
    # the search must judge candidates by that timing, as the final build does.
    from edgeprune.backends import backend_replaced, get_backend
    from edgeprune.gate import Budgets
    from edgeprune.measure.local import measure_onnx_files
    from edgeprune.measurements import Latency
    from edgeprune.target import BuildOptions

    onnx = get_backend("onnx")

    class OwnTiming:
        name, precisions, sparsity_storage, computes_int8 = onnx.name, onnx.precisions, onnx.sparsity_storage, True
        check, predictor, cannot_run_reason = onnx.check, onnx.predictor, onnx.cannot_run_reason

        def lower(self, model, example_inputs, request, out_dir):
            artifact = onnx.lower(model, example_inputs, request, out_dir)
            stats = measure_onnx_files({"a": artifact.measure_path}, example_inputs, 1)["a"]
            artifact.latency = Latency("measured", "the backend's own runtime", median_ms=stats.median_ms,
                                       p90_ms=stats.p90_ms, spread=0.0)
            return artifact

    with backend_replaced("onnx", OwnTiming()):
        report = build_report(BuildOptions(model=str(DIGITS), profile="x86-avx2", output=tmp_path / "b",
                                           quantize="none", budgets=Budgets(latency_ms=1000.0)))
    assert report["latency"]["device"] == "the backend's own runtime"
    tried = report["search"]["candidates"]
    assert tried and all(c["latency_source"] == "measured" for c in tried)


# A host that never stands in for the profiles below: their latency is the estimator's, so
# a candidate's figure and the build's must be the same number, not two noisy timings.
ARM_HOST = Host(cpu="test Arm CPU", machine="aarch64", cores=2, flags=frozenset({"asimd"}), system="Linux", mhz=2000.0)


@pytest.mark.parametrize(("profile", "options"), [
    ("x86-avx2", {"quantize": "none"}),
    ("x86-avx2", {"quantize": "int8"}),
    ("iphone-15-pro", {"quantize": "none", "palettize": 4}),
], ids=["onnx-fp32", "onnx-int8", "coreml-palettized"])
def test_a_candidate_records_what_the_build_of_its_plan_reports(tmp_path, profile, options):
    if profile == "iphone-15-pro":
        pytest.importorskip("coremltools")
    report = edgeprune.build(str(DIGITS), profile=profile, output=tmp_path / "b", latency_budget_ms=1000.0,
                             host=ARM_HOST, **options).to_dict()
    chosen = _chosen(report)
    assert report["latency"]["source"] == chosen["latency_source"] == "estimated"
    assert chosen["latency_ms"] == report["latency"]["median_ms"]
    assert chosen["size_bytes"] == report["artifact"]["size_bytes"]
    assert chosen["metric"] == report["accuracy"].get("pruned")
    assert chosen["peak_memory_mb"] == report["memory"]["peak_mb"]
    if profile == "iphone-15-pro":  # Core ML does not run here: neither the search nor the build saw a metric
        assert chosen["metric"] is None and "Apple hardware" in report["accuracy"]["note"]
    else:
        assert chosen["metric"] is not None and report["artifact"]["precision"] == ("int8" if options["quantize"] == "int8" else "fp32")


def test_a_build_a_plan_and_a_sweep_run_from_python_alone(tmp_path):
    workload = edgeprune.load_workload(str(ROOT / "tests" / "tiny_workload.py"))
    plan = edgeprune.plan(workload, "jetson-orin-nano", format="onnx", latency_budget_ms=50.0)
    assert plan.format == "onnx" and plan.search is not None and plan.reasons
    report = edgeprune.build(workload, profile="jetson-orin-nano", format="onnx", output=tmp_path / "b",
                             latency_budget_ms=50.0)
    assert isinstance(report, edgeprune.Report) and report.passed
    assert report.search["chosen"] == "dense" and report.latency.source == "estimated"
    assert edgeprune.report.read_report(tmp_path / "b").to_dict() == report.to_dict()
    with pytest.raises(edgeprune.BudgetMissed, match="missed: latency_median_ms") as missed:
        edgeprune.build(workload, profile="jetson-orin-nano", format="onnx", output=tmp_path / "miss",
                        strategy="none", latency_budget_ms=1e-4, fail_on_miss=True)
    assert missed.value.report.passed is False and (tmp_path / "miss" / "report.json").exists()

    target = tmp_path / "tiny.toml"
    target.write_text(f'model = "{ROOT / "tests" / "tiny_workload.py"}"\nprofile = "jetson-orin-nano"\n'
                      'format = "onnx"\nmax-size-mb = 1.0\noutput = "built"\n')
    options = edgeprune.load_target(target, strategy="none")
    assert options.strategy == "none" and options.budgets.max_size_mb == 1.0 and options.output == tmp_path / "built"

    summary = edgeprune.sweep(workload, "jetson-orin-nano", tmp_path / "sweep", strategies=["structured"],
                              sparsities=[0.5], quantize=["none"], format="onnx")
    labels = [row["candidate"]["label"] for row in summary["candidates"]]
    assert labels == ["dense", "structured 0.50"] and (tmp_path / "sweep" / "sweep.md").exists()
    assert summary["candidates"][1]["macs"] < summary["candidates"][0]["macs"]


def test_every_report_is_checked_against_the_published_schema(tmp_path, digits_build):
    from edgeprune.report import report_schema, schema_errors

    published = json.loads((ROOT / "docs" / "report.schema.json").read_text())
    assert published == report_schema()  # the file the build validates against is the published one
    report = digits_build[2]
    assert schema_errors(report) == []
    for broken in ({"passed": "yes"}, {"latency": {"source": "measured", "device": "x"}},
                   {"model": {**report["model"], "macs_after": -1}}, {"schema": 3}):
        path = stored_report(tmp_path, report, **broken)
        proc = run_cli("check", str(path))
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, (broken, proc.stderr)
        assert "report" in proc.stderr


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_a_hugging_face_lm_in_a_plain_wrapper_is_pruned_block_by_block(tmp_path, family):
    pytest.importorskip("transformers")
    workload = edgeprune.load_workload(f"{ROOT / 'tests' / 'wrapped_lm.py'}:{family}")
    report = edgeprune.build(workload, profile="host", strategy="structured", sparsity=0.3, quantize="none",
                             output=tmp_path / "b").to_dict()
    details = report["strategy"]["details"]
    assert details["architecture"] == family and details["wrapped_as"] == "Logits.model"
    assert details["ffn_width"]["after"] < details["ffn_width"]["before"]
    assert report["model"]["params_after"] < report["model"]["params_before"]
    assert report["artifact"]["verified"]["passed"] and report["artifact"]["hf_model"]["reload_max_abs_diff"] < 1e-4


def test_a_directory_that_is_not_a_hugging_face_model_is_exit_2(tmp_path):
    # hf:DIR builds of every family (causal LMs by perplexity, classifiers by agreement) are
    # tests/test_zoo.py's
    bad = run_cli("build", f"hf:{tmp_path}", "--profile", "host", "-o", str(tmp_path / "never"))
    assert bad.returncode == 2 and "no config.json" in bad.stderr and not (tmp_path / "never").exists()


def test_hugging_face_attention_is_pruned_by_whole_heads(tmp_path):
    # BertSelfAttention keeps q/k/v; its output projection sits in the sibling BertSelfOutput
    transformers = pytest.importorskip("transformers")
    import torch

    torch.manual_seed(0)
    bert = transformers.BertForSequenceClassification(transformers.BertConfig(
        vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128))
    bert.save_pretrained(tmp_path / "bert")
    proc = run_cli("build", f"hf:{tmp_path / 'bert'}", "--profile", "host", "--strategy", "structured",
                   "--sparsity", "0.5", "-o", str(tmp_path / "out"), "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    heads = [g for g in report["strategy"]["details"]["groups"] if g.get("unit") == "head"]
    assert len(heads) == 2 and all(g["heads"] == 4 and g["heads_after"] == 2 for g in heads)
    assert report["artifact"]["verified"]["passed"] and report["accuracy"]["metric"] == "top1_agreement_with_dense"
