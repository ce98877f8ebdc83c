"""Builds for devices that are not this machine report an estimate, and the gate distrusts it."""

import json

import pytest

from edgeprune import load_workload
from edgeprune.gate import Budgets, check_budgets
from edgeprune.measure.estimate import estimate_onnx
from edgeprune.measure.latency import Timing, latency_of
from edgeprune.measure.memory import peak_memory
from edgeprune.profile import load_profile
from edgeprune.report import Report
from edgeprune.target import BuildOptions

from conftest import ROOT, build_report, run_cli

TINY = ROOT / "tests" / "tiny_workload.py"


def test_jetson_build_reports_an_estimate_and_a_budget_inside_the_margin_fails(tmp_path):
    out = tmp_path / "jetson"
    report = build_report(BuildOptions(model=str(TINY), profile="jetson-orin-nano", format="onnx", output=out,
                                budgets=Budgets(latency_ms=1000.0, max_memory_mb=100.0)))
    lat = report["latency"]
    assert lat["source"] == "estimated" and lat["device"].startswith("jetson-orin-nano")
    assert "runs" not in lat and "spread" not in lat  # nothing was timed
    est = lat["estimated_ms"]
    assert lat["median_ms"] == lat["p90_ms"] == est > 0
    assert lat["estimate"]["profile"] == "jetson-orin-nano" and lat["estimate"]["kernels"] >= 4
    assert lat["baseline_median_ms"] == lat["baseline_estimated_ms"] == est and lat["speedup"] == 1.0
    # the report's number is the estimator's on the lowered artifact
    assert est == round(estimate_onnx(out / "model.onnx", [(1, 3, 32, 32)], load_profile("jetson-orin-nano")).ms, 4)
    assert report["memory"]["peak_mb"] == round(peak_memory(out / "model.onnx", [(1, 3, 32, 32)]).peak_bytes / 1e6, 4)
    assert report["passed"] is True

    measured = Report.from_dict(report).measurements()
    inside = check_budgets(measured, Budgets(latency_ms=est * 1.1))[0]  # estimate x 1.33 > budget
    assert inside.met is False and "estimated, not measured" in inside.note
    assert check_budgets(measured, Budgets(latency_ms=est * 1.35))[0].met is True
    proc = run_cli("check", str(out), "--latency-budget-ms", f"{est * 1.1:.6f}", "--json")
    assert proc.returncode == 3 and json.loads(proc.stdout)["budgets"][0]["met"] is False


def test_iphone_coreml_artifact_is_estimated_at_its_precision(tmp_path):
    from edgeprune.backends import LowerRequest, get_backend
    from edgeprune.backends.onnx_tools.export import export_onnx

    pytest.importorskip("coremltools", reason="the coreml extra is not installed")
    workload = load_workload(str(TINY))
    iphone = load_profile("iphone-15-pro")
    # a real package, converted here (it runs only on macOS, so its latency is estimated)
    (tmp_path / "coreml").mkdir()
    artifact = get_backend("coreml").lower(workload.model.eval(), tuple(workload.example_inputs),
                                           LowerRequest("fp16", iphone), tmp_path / "coreml")
    assert artifact.format == "coreml" and artifact.path.suffix == ".mlpackage" and artifact.size_bytes > 0
    dense = export_onnx(workload.model, workload.example_inputs, tmp_path / "dense.onnx")
    lat, memory = latency_of(Timing(iphone, Budgets()), artifact, workload.model, workload.example_inputs, dense, False)
    assert lat.source == "estimated" and lat.device.startswith("iphone-15-pro")
    assert "not measured" in lat.note and "--device" in lat.note
    onnx_file = export_onnx(workload.model, workload.example_inputs, tmp_path / "same.onnx")
    fp16 = estimate_onnx(onnx_file, [(1, 3, 32, 32)], iphone, precision="fp16")
    fp32 = estimate_onnx(onnx_file, [(1, 3, 32, 32)], iphone)
    assert lat.estimated_ms == round(fp16.ms, 4) and fp16.bytes == pytest.approx(fp32.bytes / 2)
    # the iPhone runs no fp32: the dense baseline is estimated at fp16 too
    assert lat.estimate["baseline_precision"] == "fp16" and lat.speedup == 1.0
    assert memory.peak_mb == round(peak_memory(onnx_file, [(1, 3, 32, 32)]).peak_bytes / 2 / 1e6, 4)


def test_an_estimate_on_a_profile_whose_machine_swung_while_probed_must_clear_the_swing_too(tmp_path):
    """A probe that saw its machine run up to 50% slower at times (a VM's slow-waking cores) makes every
    estimate on the profile carry that spread: a budget the estimate clears by the margin alone fails, one
    it clears by margin and swing passes; the ratio of two estimates on one profile is judged by the margin."""
    from edgeprune.probe import write_profile

    data = load_profile("jetson-orin-nano").model_dump(mode="json", exclude_none=True)
    data.update(name="swingy", efficiency={**data["efficiency"], "swing": 1.5})
    profile = tmp_path / "swingy.toml"
    write_profile(data, profile)
    report = build_report(BuildOptions(model=str(TINY), profile=str(profile), format="onnx", output=tmp_path / "b"))
    lat = report["latency"]
    assert lat["source"] == "estimated" and lat["spread"] == 0.5 and "up to 50% slower" in lat["note"]
    est = lat["estimated_ms"]
    measured = Report.from_dict(report).measurements()
    margin_only = check_budgets(measured, Budgets(latency_ms=est * 1.4))[0]  # clears x 1.33, not x 1.33 x 1.5
    assert margin_only.met is False and "x 2.00" in margin_only.note and "swung" in margin_only.note
    assert check_budgets(measured, Budgets(latency_ms=est * 2.05))[0].met is True
    assert check_budgets(measured, Budgets(latency_ratio=1.35))[0].met is True  # 1.0 x 1.33 <= 1.35


def test_an_estimate_is_padded_by_the_probed_cost_a_kernel_split_over_threads_can_take_when_less_than_the_swing(tmp_path):
    """Where the probe also timed how much longer a kernel split over the threads took at times, an estimate's
    spread is that cost times its kernels over its time, when less than the swing: a model of few long kernels is
    not padded as much as one of many short ones; more than the swing, the swing bounds it."""
    from edgeprune.probe import write_profile

    data = load_profile("jetson-orin-nano").model_dump(mode="json", exclude_none=True)
    spreads = {}
    for name, stall_us in (("stalls", 2.0), ("stalls-a-lot", 1e5)):
        data.update(name=name, efficiency={**data["efficiency"], "swing": 2.0, "stall_us": stall_us})
        write_profile(data, tmp_path / f"{name}.toml")
        report = build_report(BuildOptions(model=str(TINY), profile=str(tmp_path / f"{name}.toml"), format="onnx",
                                           output=tmp_path / name))
        lat = report["latency"]
        spreads[name] = lat["spread"]
        if name == "stalls":
            kernels, est = lat["estimate"]["kernels"], lat["estimated_ms"]
            assert kernels > 1 and lat["spread"] == round(2.0 * kernels / 1000 / est, 4) < 1.0
            assert f"each of its {kernels} kernels took up to 2 us longer" in lat["note"]
            measured = Report.from_dict(report).measurements()
            padded = est * (1 + Budgets().estimate_margin) * (1 + lat["spread"])
            assert check_budgets(measured, Budgets(latency_ms=padded * 0.99))[0].met is False
            assert check_budgets(measured, Budgets(latency_ms=padded * 1.01))[0].met is True
    assert spreads["stalls-a-lot"] == 1.0  # the swing bounds it
