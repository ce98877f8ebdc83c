"""report.md: the report as Markdown a person reads in a CI log or a pull request."""

from __future__ import annotations

from typing import Any


def fmt(value: Any, digits: int = 4) -> str:
    """Returns a report figure as the tables show it: 4 significant digits, thousands separated, — for none."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    if isinstance(value, int) and abs(value) >= 10_000:
        return f"{value:,}"
    return str(value)


def ratio(after: float | None, before: float | None) -> str:
    """Returns after / before as a percentage, — when either is missing."""
    if not after or not before:
        return "—"
    return f"{after / before:.1%}"


def render_markdown(report: dict) -> str:
    """Returns the report as Markdown a person reads in a CI log or a pull request."""
    s = report.get("strategy", {})
    m = report.get("model", {})
    a = report.get("artifact", {})
    lat = report.get("latency", {})
    acc = report.get("accuracy", {})
    verdict = "PASSED" if report.get("passed") else "FAILED"
    lines = [
        f"# edgeprune build: {report.get('workload', 'model')} for {report.get('profile')} — {verdict}",
        "",
        f"Strategy **{s.get('kind')}** (sparsity {fmt(s.get('sparsity'))}), quantization "
        f"**{s.get('quantization')}**, format **{a.get('format')}** ({a.get('precision')}).",
        "",
    ]
    if s.get("reasons"):
        lines += ["Why:", *[f"- {r}" for r in s["reasons"]], ""]
    lines += [
        "| | before | after | ratio |", "|---|---|---|---|",
        f"| parameters | {fmt(m.get('params_before'))} | {fmt(m.get('params_after'))} | {ratio(m.get('params_after'), m.get('params_before'))} |",
        f"| non-zero parameters | {fmt(m.get('params_before'))} | {fmt(m.get('nonzero_params_after'))} | {ratio(m.get('nonzero_params_after'), m.get('params_before'))} |",
        f"| MACs | {fmt(m.get('macs_before'))} | {fmt(m.get('macs_after'))} | {ratio(m.get('macs_after'), m.get('macs_before'))} |",
        "",
    ]
    verified = a.get("verified", {})
    lines += [
        f"Artifact: `{a.get('path')}`, {fmt(a.get('size_bytes'))} bytes; verified "
        f"{verified.get('method', '—')}: {'passed' if verified.get('passed') else 'FAILED'}"
        + (f" (max abs diff {fmt(verified.get('max_abs_diff'), 3)}, top-1 agreement {fmt(verified.get('agreement'))})"
           if verified.get("method") == "numeric" else "")
        + ".",
        "",
    ]
    if lat:
        lines += [
            f"Latency ({lat.get('source')}, {lat.get('device')}): median {fmt(lat.get('median_ms'))} ms, "
            f"p90 {fmt(lat.get('p90_ms'))} ms over {fmt(lat.get('runs'))} runs"
            + (f", spread {lat['spread']:.1%}" if lat.get("spread") is not None else "")
            + (f"; dense fp32 baseline {fmt(lat.get('baseline_median_ms'))} ms, speed-up {fmt(lat.get('speedup'), 3)}x"
               if lat.get("baseline_median_ms") else "")
            + ".",
            "",
        ]
        if lat.get("stands_in"):
            lines += [f"Measured on {lat.get('host')}: {lat['stands_in']}.", ""]
        elif lat.get("source") != "measured" and lat.get("note"):
            lines += [lat["note"][:1].upper() + lat["note"][1:].rstrip(".") + ".", ""]
    if acc:
        lines += [
            f"{acc.get('metric', 'metric')}: dense {fmt(acc.get('baseline'))}, built {fmt(acc.get('pruned'))}, "
            f"drop {fmt(acc.get('drop'))}" + (f" ({acc['note']})" if acc.get("note") else "") + ".",
            "",
        ]
    if report.get("budgets"):
        lines += ["| budget | limit | value | met |", "|---|---|---|---|"]
        for b in report["budgets"]:
            lines.append(f"| {b['name']} | {fmt(b['limit'])} | {fmt(b['value'])} | "
                         f"{'yes' if b['met'] else '**no**'}{' — ' + b['note'] if b.get('note') else ''} |")
        lines.append("")
    if report.get("notes"):
        lines += ["Notes:", *[f"- {n}" for n in report["notes"]], ""]
    return "\n".join(lines)
