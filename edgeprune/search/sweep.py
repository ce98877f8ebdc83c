"""The sweep: a grid of strategies x sparsities x quantization, its table and Pareto fronts."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

from edgeprune.report.html import render_sweep_html
from edgeprune.report.pareto import write_pareto
from edgeprune.search.candidates import Candidate, CandidateEvaluator, Outcome


def grid(strategies: Sequence[str], sparsities: Sequence[float], quantize: Sequence[str],
         nm: tuple[int, int] = (2, 4)) -> list[Candidate]:
    """Returns the sweep's candidates: the dense model first, then every combination."""
    out = [Candidate("none", 0.0, q) for q in quantize]
    for kind in strategies:
        amounts = [1 - nm[0] / nm[1]] if kind == "nm" else list(sparsities)
        out += [Candidate(kind, float(s), q) for s in amounts for q in quantize]
    return out


def pareto(points: list[tuple[float, float]], higher_is_better: bool) -> list[bool]:
    """Returns, per (cost, metric) point, whether no other point is cheaper and at least as good."""
    flags = []
    for i, (cost, metric) in enumerate(points):
        dominated = False
        for j, (c2, m2) in enumerate(points):
            better = m2 >= metric if higher_is_better else m2 <= metric
            strictly = c2 < cost or (m2 > metric if higher_is_better else m2 < metric)
            if j != i and c2 <= cost and better and strictly:
                dominated = True
                break
        flags.append(not dominated)
    return flags


def run_sweep(evaluator: CandidateEvaluator, candidates: list[Candidate],
              advance: Callable[[Outcome], None] = lambda _: None) -> list[Outcome]:
    """Returns every candidate scored (cached results are reused, so a rerun resumes)."""
    outcomes = []
    for candidate in candidates:
        outcome = evaluator.score(candidate)
        outcomes.append(outcome)
        advance(outcome)
    return outcomes


def _front(outcomes: list[Outcome], cost: str, higher_is_better: bool) -> set[int]:
    ok = [(i, o) for i, o in enumerate(outcomes)
          if o.error is None and o.metric is not None and getattr(o, cost) is not None]
    flags = pareto([(float(getattr(o, cost)), o.metric) for _, o in ok], higher_is_better)
    return {i for (i, _), flag in zip(ok, flags, strict=True) if flag}


def write_sweep(outcomes: list[Outcome], folder: Path, metric: str, higher_is_better: bool, title: str,
                agents: dict[str, dict] | None = None) -> dict:
    """Returns the sweep summary after writing sweep.json, sweep.md, pareto.png and report.html into the folder.

    ``agents``: a farm's agents, each one's state, measurements and why it went down."""
    folder.mkdir(parents=True, exist_ok=True)
    by_latency = _front(outcomes, "latency_ms", higher_is_better)
    by_size = _front(outcomes, "size_bytes", higher_is_better)
    rows = []
    for i, o in enumerate(outcomes):
        rows.append({**o.to_dict(), "pareto_latency": i in by_latency, "pareto_size": i in by_size})
    summary = {"title": title, "metric": metric, "higher_is_better": higher_is_better, "candidates": rows}
    if agents:
        summary["agents"] = agents
    (folder / "sweep.json").write_text(json.dumps(summary, indent=2) + "\n")
    (folder / "sweep.md").write_text(_markdown(rows, metric, title))
    svg = write_pareto(rows, folder / "pareto.png", metric, title)
    (folder / "report.html").write_text(render_sweep_html(summary, svg))
    return summary


def _markdown(rows: list[dict], metric: str, title: str) -> str:
    lines = [f"# Sweep: {title}", "",
             f"| candidate | latency ms | source | size MB | MACs | {metric} | drop | worst slice | "
             "Pareto (latency / size) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lat = f"{r['latency_ms']:.3f}" if r["latency_ms"] is not None else "—"
        size = f"{r['size_bytes'] / 1e6:.2f}" if r["size_bytes"] else "—"
        macs = f"{r['macs'] / 1e6:.1f}M" if r["macs"] else "—"
        score = f"{r['metric']:.4f}" if r["metric"] is not None else (r["error"] or "—")
        by = r.get("measured_by") or ""
        source = (r["latency_source"] or "—") + (f" on {by.split(' (')[0]}" if by and not by.startswith("local:") else "")
        drop = f"{r['drop']:+.4f}" if r["drop"] is not None else "—"
        worst = (f"{r['worst_slice']} ({r['worst_slice_drop']:+.4f})"
                 if r.get("worst_slice") is not None and r.get("worst_slice_drop") is not None else "—")
        front = " / ".join("★" if r[k] else "" for k in ("pareto_latency", "pareto_size"))
        lines.append(f"| {r['candidate']['label']} | {lat} | {source} | {size} | {macs} | "
                     f"{score} | {drop} | {worst} | {front} |")
    lines += ["", "★ Pareto-optimal: no other candidate is both cheaper and at least as accurate.",
              "Latency source: measured here, or estimated from the profile (roofline); never mixed silently.", ""]
    return "\n".join(lines)
