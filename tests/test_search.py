"""Budget-driven builds and sweeps on the real digits model, measured on this CPU."""

import json

from conftest import DIGITS, run_cli


def test_budget_of_60_percent_of_dense_latency_is_met_and_explained(tmp_path, digits_build):
    _, _, dense = digits_build
    budget = round(0.6 * dense["latency"]["median_ms"], 3)
    out = tmp_path / "fast"
    proc = run_cli("build", str(DIGITS), "--profile", "x86-avx2", "-o", str(out), "--latency-budget-ms", str(budget),
                   "--max-accuracy-drop", "0.02", "--json")
    report = json.loads(proc.stdout)
    assert proc.returncode == 0, (proc.stderr, report.get("budgets"), report.get("search"))
    assert report["passed"] and all(b["met"] for b in report["budgets"])
    lat = report["latency"]
    assert lat["source"] == "measured" and lat["median_ms"] <= budget
    assert lat["speedup"] > 1.4  # measured side by side with the dense fp32 model
    assert report["accuracy"]["drop"] <= 0.02 and report["accuracy"]["evaluated_on"] == "artifact"
    search = report["search"]
    assert search["chosen"] and len(search["candidates"]) >= 2
    assert any(r.startswith("search chose") for r in report["strategy"]["reasons"])
    # the chosen candidate is the least pruned that met the cost budgets among those tried
    chosen = [c for c in search["candidates"] if c["candidate"]["label"] == search["chosen"]][-1]
    assert chosen["misses"] == []


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
    args = ("sweep", str(DIGITS), "--profile", "x86-avx2", "-o", str(out), "--strategies", "structured,unstructured",
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
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| structured 0.50 |" in (out / "sweep.md").read_text()
    again = run_cli(*args)
    assert json.loads(again.stdout)["candidates"] == summary["candidates"]  # served from the cache
