import json
from pathlib import Path

import onnx

from edgeprune.backends.onnx_tools import runtime as onnx_runtime
from edgeprune.report import read_report

from conftest import DIGITS, ROOT, run_cli


def test_dense_digits_build_writes_a_verified_onnx_and_a_measured_report(digits_build):
    proc, out, report = digits_build
    assert proc.returncode == 0, proc.stderr
    assert report == read_report(out).to_dict()
    assert (out / "report.md").read_text().startswith("# edgeprune build: digits_cnn for host")
    art = report["artifact"]
    assert art["format"] == "onnx" and Path(art["path"]) == out / "model.onnx"
    onnx.checker.check_model(art["path"])
    assert art["size_bytes"] == (out / "model.onnx").stat().st_size > 1_000_000
    verified = art["verified"]
    assert verified["method"] == "numeric" and verified["passed"]
    assert verified["max_abs_diff"] < 1e-3 and verified["agreement"] == 1.0
    lat = report["latency"]
    assert lat["source"] == "measured" and lat["device"].startswith("local:")
    # what it was measured on, and why that stands for the target, are in the report and its markdown
    assert lat["host"] in lat["device"] and "runs the kernels of profile host" in lat["stands_in"]
    assert "measure_here" not in lat and f"Measured on {lat['host']}: " in (out / "report.md").read_text()
    assert lat["runs"] >= 10 and 0 < lat["median_ms"] <= lat["p90_ms"]
    assert lat["speedup"] == 1.0  # a dense fp32 build is its own baseline
    acc = report["accuracy"]
    assert acc["evaluated_on"] == "artifact" and acc["baseline"] >= 0.97 and abs(acc["drop"]) < 0.005
    m = report["model"]
    assert m["params_before"] == m["params_after"] > 1_000_000 and m["macs_before"] > 100e6
    assert report["passed"] is True and report["strategy"]["kind"] == "none"


def test_artifact_accuracy_is_computed_by_the_artifact(digits_build):
    _, out, report = digits_build
    from examples_digits import accuracy_of_onnx

    assert abs(accuracy_of_onnx(out / "model.onnx") - report["accuracy"]["pruned"]) < 1e-9


def test_impossible_latency_budget_gives_exit_3_and_passed_false(tmp_path):
    out = tmp_path / "tight"
    proc = run_cli("build", str(DIGITS), "--profile", "x86-avx2", "-o", str(out), "--latency-budget-ms", "0.01",
                   "--max-size-mb", "100", "--strategy", "none", "--json")
    assert proc.returncode == 3, proc.stderr
    report = json.loads(proc.stdout)
    assert report["passed"] is False
    budgets = {b["name"]: b for b in report["budgets"]}
    assert budgets["latency_median_ms"]["met"] is False and budgets["size_mb"]["met"] is True
    assert read_report(out).passed is False


def test_the_demo_target_prunes_recovers_and_quantizes_to_pass_budgets_no_dense_model_meets(tmp_path):
    target = tmp_path / "t.toml"
    text = (ROOT / "targets" / "digits-host.toml").read_text()
    target.write_text(text.replace('"../examples/digits_cnn.py"', f'"{DIGITS}"'))
    proc = run_cli("build", str(target), "-o", str(tmp_path / "o"))
    assert proc.returncode == 0, proc.stderr
    report = read_report(tmp_path / "o").to_dict()
    budgets = {b["name"]: b for b in report["budgets"]}
    assert set(budgets) == {"latency_median_ratio", "size_mb", "accuracy_drop", "slice_drop"}
    lat = report["latency"]
    # the ratio is the artifact over the dense model, the two timed side by side in this build
    assert lat["source"] == "measured" and budgets["latency_median_ratio"]["value"] == round(
        lat["median_ms"] / lat["baseline_median_ms"], 4) <= 0.5
    assert report["strategy"]["kind"] == "structured" and report["strategy"]["quantization"] == "int8"
    assert report["strategy"]["sparsity"] > 0 and report["artifact"]["size_bytes"] <= 0.5e6
    tried = {c["candidate"]["label"]: c for c in report["search"]["candidates"]}
    assert "size_mb" in tried["dense + int8"]["misses"]  # quantization alone does not fit: channels had to go
    assert report["accuracy"]["slices"] and budgets["slice_drop"]["slice"] == report["accuracy"]["worst_slice"]
    # the build says where every report file is, and report.md shows the candidates tried
    assert str(tmp_path / "o" / "report.md") in proc.stderr and str(tmp_path / "o" / "report.json") in proc.stderr
    assert "| candidate | latency ms | size MB | metric | worst slice | misses |" in proc.stdout


def test_a_failed_build_leaves_the_previous_good_build_untouched(tmp_path, digits_build):
    _, good, _ = digits_build
    out = tmp_path / "keep"
    out.mkdir()
    for f in good.iterdir():
        (out / f.name).write_bytes(f.read_bytes())
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    broken = tmp_path / "broken.py"
    broken.write_text(
        f"import sys; sys.path.insert(0, {str(DIGITS.parent)!r})\n"
        "import digits_cnn\n"
        "calls = []\n"
        "def workload():\n"
        "    w = digits_cnn.workload()\n"
        "    score = w.evaluate\n"
        "    def evaluate(predict):\n"
        "        calls.append(1)\n"
        "        if len(calls) > 1:  # the dense model scores; the artifact, at the end of the build, crashes\n"
        "            raise RuntimeError('evaluation crashed')\n"
        "        return score(predict)\n"
        "    w.evaluate = evaluate\n"
        "    return w\n"
    )
    proc = run_cli("build", str(broken), "--profile", "x86-avx2", "-o", str(out))
    assert proc.returncode == 2 and "evaluation crashed" in proc.stderr and "Traceback" not in proc.stderr
    assert "lower to onnx" in proc.stderr  # it failed late, with an artifact already lowered
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_output_folder_that_is_not_a_build_is_refused(tmp_path):
    precious = tmp_path / "mine"
    precious.mkdir()
    (precious / "thesis.tex").write_text("do not delete")
    proc = run_cli("build", str(DIGITS), "--profile", "x86-avx2", "-o", str(precious))
    assert proc.returncode == 2 and "holds no edgeprune build" in proc.stderr
    assert (precious / "thesis.tex").read_text() == "do not delete"


def test_bad_numbers_and_unknown_profiles_are_exit_2(tmp_path):
    cases = [
        (["--profile", "x86-avx2", "--latency-budget-ms", "-5"], "must be a positive number"),
        (["--profile", "x86-avx2", "--latency-budget-ms", "fast"], "not a valid float"),
        (["--profile", "nowhere"], "unknown profile"),
        (["--profile", "x86-avx2", "--format", "coreml"], "does not run format"),
    ]
    for args, message in cases:
        proc = run_cli("build", str(DIGITS), *args, "-o", str(tmp_path / "o"))
        assert proc.returncode == 2, (args, proc.stderr)
        assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists()


def test_onnx_predictor_matches_session_outputs(digits_build):
    _, out, _ = digits_build
    import torch

    predict = onnx_runtime.predictor(out / "model.onnx")
    x = torch.zeros(3, 1, 32, 32)
    assert predict(x).shape == (3, 10)


def test_an_artifact_with_a_fixed_batch_is_run_at_the_batch_it_accepts(tmp_path):
    # an exporter that pins the batch to 1 (as TorchScript does for some transformers) must not
    # make verification or scoring fail on batches of calibration data
    import torch

    from edgeprune import load_workload
    from edgeprune.backends.onnx_tools.export import export_onnx

    workload = load_workload(str(ROOT / "tests" / "tiny_workload.py"))
    pinned = export_onnx(workload.model, workload.example_inputs, tmp_path / "pinned.onnx", dynamic_batch=False)
    predict = onnx_runtime.predictor(pinned)
    assert onnx_runtime.fixed_batch(onnx_runtime.session(pinned)) == 1
    x = workload.calibration[0][0]
    with torch.no_grad():
        assert torch.allclose(predict(x), workload.model(x), atol=1e-4) and predict(x).shape[0] == len(x)
