"""Budget-driven builds and sweeps on the real digits model (the sweep measured on this CPU's own profile), and on a
small residual CNN whose int8 pays on one device and not on another."""

import json
from pathlib import Path

from conftest import DIGITS, ROOT, run_cli


def test_search_finds_the_least_pruning_that_meets_a_size_budget(tmp_path):
    # Size is deterministic, so this pins the search itself; the latency-budget build
    # (60% of dense latency) is a benchmark: benchmarks/budget_search.py, docs/benchmarks.md.
    out = tmp_path / "small"
    proc = run_cli("build", str(DIGITS), "--profile", "x86-avx2", "-o", str(out), "--max-size-mb", "2.0",
                   "--quantize", "none", "--max-accuracy-drop", "0.02", "--json")
    report = json.loads(proc.stdout)
    assert proc.returncode == 0, (proc.stderr, report.get("budgets"), report.get("search"))
    assert report["passed"] and report["artifact"]["size_bytes"] <= 2.0e6
    assert report["strategy"]["kind"] == "structured" and report["accuracy"]["drop"] <= 0.02
    chosen = report["strategy"]["sparsity"]
    sizes = {c["candidate"]["sparsity"]: c["size_bytes"] for c in report["search"]["candidates"]}
    assert sizes[chosen] <= 2.0e6
    # the next grid point down was tried and is too large: the choice is the least pruning
    assert round(chosen - 0.05, 4) in sizes and sizes[round(chosen - 0.05, 4)] > 2.0e6
    assert any(r.startswith("search chose") for r in report["strategy"]["reasons"])
    assert report["model"]["params_after"] < 0.5 * report["model"]["params_before"]


def test_a_budget_no_candidate_meets_gives_exit_3_with_the_nearest(tmp_path):
    out = tmp_path / "impossible"
    proc = run_cli("build", str(DIGITS), "--profile", "x86-avx2", "-o", str(out), "--latency-budget-ms", "0.001",
                   "--json")
    assert proc.returncode == 3, proc.stderr
    report = json.loads(proc.stdout)
    assert report["passed"] is False
    nearest = report["search"]["nearest"]
    assert nearest and all("latency_median_ms" in n["misses"] for n in nearest)
    assert any("no candidate meets every budget" in r for r in report["strategy"]["reasons"])


def test_sweep_writes_table_plot_and_resumes_from_cache(tmp_path):
    out = tmp_path / "sweep"
    args = ("sweep", str(DIGITS), "--profile", "host", "-o", str(out), "--strategies", "structured,unstructured",
            "--sparsities", "0.5", "--quantize", "none", "--json")
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    summary = json.loads(first.stdout)
    rows = {r["candidate"]["label"]: r for r in summary["candidates"]}
    assert set(rows) == {"dense", "structured 0.50", "unstructured 0.50"}
    dense, structured, unstructured = rows["dense"], rows["structured 0.50"], rows["unstructured 0.50"]
    assert structured["macs"] < 0.6 * dense["macs"]
    assert unstructured["macs"] == dense["macs"] and unstructured["nonzero_params"] < 0.6 * dense["nonzero_params"]
    assert all(r["latency_source"] == "measured" and r["metric"] is not None for r in rows.values())
    # the dense model is the most accurate, so it is on both fronts
    assert dense["pareto_latency"] and dense["pareto_size"]
    # each front is exactly the candidates no other one beats on cost and metric (accuracy: higher is better)
    for cost, flag in (("latency_ms", "pareto_latency"), ("size_bytes", "pareto_size")):
        for r in rows.values():
            beaten = any(o is not r and o[cost] <= r[cost] and o["metric"] >= r["metric"]
                         and (o[cost] < r[cost] or o["metric"] > r["metric"]) for o in rows.values())
            assert r[flag] is (not beaten), (cost, r["candidate"]["label"], [(o[cost], o["metric"]) for o in rows.values()])
    from PIL import Image

    with Image.open(out / "pareto.png") as png:  # a real plot: a picture of some size with more than a background
        assert png.format == "PNG" and png.width >= 400 and png.height >= 300
        assert len(png.convert("RGB").getcolors(1 << 20) or []) > 8
    assert "| structured 0.50 |" in (out / "sweep.md").read_text()
    again = run_cli(*args)
    assert json.loads(again.stdout)["candidates"] == summary["candidates"]  # served from the cache


def test_a_precision_the_search_chooses_is_the_precision_that_ships(tmp_path):
    # int8 alone brings the digits CNN under 1.5 MB (4.7 MB in fp32) without pruning; the
    # final artifact must be lowered at the precision the search chose, not the plan's first
    out = tmp_path / "int8"
    proc = run_cli("build", str(DIGITS), "--profile", "x86-avx2", "-o", str(out), "--max-size-mb", "1.5",
                   "--max-accuracy-drop", "0.02", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["search"]["chosen"] == "dense + int8"
    assert report["artifact"]["precision"] == "int8" and report["strategy"]["quantization"] == "int8"
    assert report["artifact"]["size_bytes"] <= 1.5e6 and report["passed"]


def test_the_search_quantizes_only_where_int8_pays_on_the_device(tmp_path):
    # The same residual CNN and latency budget on two x86 profiles that differ only in their int8
    # activations: with U8 every convolution is an integer kernel in ONNX Runtime and int8 meets the
    # budget unpruned; with S8 ONNX Runtime runs the convolutions after a residual sum in float behind a
    # DequantizeLinear, int8 is slower than fp32 there, and the search ships fp32 pruned instead.
    s8 = tmp_path / "x86-s8.toml"
    s8.write_text((ROOT / "profiles" / "x86-avx2.toml").read_text()
                  .replace('name = "x86-avx2"', 'name = "x86-s8"').replace('int8_activation = "u8"', 'int8_activation = "s8"'))
    chosen = {}
    for profile in ("x86-avx2", str(s8)):
        proc = run_cli("build", str(ROOT / "tests" / "residual_workload.py"), "--profile", profile,
                       "--latency-budget-ms", "0.39", "-o", str(tmp_path / Path(profile).stem), "--json")
        assert proc.returncode == 0, proc.stderr[-2000:]
        report = json.loads(proc.stdout)
        assert report["latency"]["source"] == "estimated" and report["passed"]
        chosen[Path(profile).stem] = report
    u8, s8_report = chosen["x86-avx2"], chosen["x86-s8"]
    assert u8["search"]["chosen"] == "dense + int8" and u8["artifact"]["precision"] == "int8"
    assert s8_report["strategy"]["quantization"] == "none" and s8_report["strategy"]["sparsity"] > 0
    # it was tried: int8 there was estimated slower than fp32 at the same sparsity
    tried = {(t["candidate"]["sparsity"], t["candidate"]["quantize"]): t["latency_ms"]
             for t in s8_report["search"]["candidates"]}
    assert any(q == "int8" and (s, "none") in tried and ms > tried[(s, "none")] for (s, q), ms in tried.items()), tried
