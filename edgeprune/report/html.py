"""report.html: the report as one self-contained page (inline CSS and SVG, no script, nothing fetched).

It renders report.json and nothing else: every figure on the page is a figure of the report,
so the page and the gate never disagree.
"""

from __future__ import annotations

import json
from html import escape
from typing import Any

from edgeprune.report.render import fmt, ratio
from edgeprune.report.svg import bar_chart, distribution_chart

DENSE, BUILT = "#9aa5b1", "#1f6feb"
EST_DENSE, EST_BUILT = "#d9b38c", "#c2571a"
TOP_LAYERS = 20

STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;background:#f6f8fa;color:#1f2328}
main{max-width:980px;margin:0 auto;padding:20px 28px 40px;background:#fff;min-height:100vh}
h1{font-size:22px;margin:6px 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #d8dee4;padding-bottom:4px}
.meta{color:#59636e;font-size:13px}.badge{display:inline-block;padding:3px 12px;border-radius:14px;font-weight:700;
color:#fff;font-size:15px;margin-right:10px}.pass{background:#1a7f37}.fail{background:#cf222e}
table{border-collapse:collapse;font-size:13px;margin:6px 0 10px}th,td{border:1px solid #d8dee4;padding:4px 9px;text-align:left}
th{background:#f6f8fa}td.num{text-align:right;font-variant-numeric:tabular-nums}.ok{color:#1a7f37;font-weight:700}
.bad{color:#cf222e;font-weight:700}.note{color:#59636e;font-size:13px;margin:4px 0 10px}ul{margin:4px 0 10px}
figure{margin:8px 0 14px}figure svg{max-width:100%;height:auto}figcaption{font-size:12px;color:#59636e}details pre{font-size:11px;overflow:auto;max-height:400px;
background:#f6f8fa;padding:8px}tr.worst td{background:#fff1f0}
"""


def page(title: str, body: list[str]) -> str:
    """Returns a whole HTML document with the report's styles and ``body``'s parts."""
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{escape(title)}</title><style>{STYLE}</style></head><body><main>"
            + "\n".join(body) + "</main></body></html>\n")


def table(header: list[str] | None, rows: list[list[Any]], numeric: set[int] = frozenset(),
          row_class: list[str] | None = None) -> str:
    """Returns an HTML table (no header row when ``header`` is None); cells are escaped unless ``Markup``."""
    head = "".join(f"<th>{escape(h)}</th>" for h in header or [])
    body = []
    for i, r in enumerate(rows):
        cells = "".join(f'<td{" class=num" if j in numeric else ""}>{_cell(c)}</td>' for j, c in enumerate(r))
        cls = f' class="{row_class[i]}"' if row_class and row_class[i] else ""
        body.append(f"<tr{cls}>{cells}</tr>")
    thead = f"<thead><tr>{head}</tr></thead>" if header else ""
    return f"<table>{thead}<tbody>{''.join(body)}</tbody></table>"


class Markup(str):
    """Text that is already HTML."""


def _cell(value: Any) -> str:
    return value if isinstance(value, Markup) else escape(fmt(value))


def figure(svg: str, caption: str) -> str:
    return f"<figure>{svg}<figcaption>{escape(caption)}</figcaption></figure>"


def render_html(report: dict) -> str:
    """Returns report.html for a report as report.json holds it."""
    passed = bool(report.get("passed"))
    title = f"edgeprune build: {report.get('workload', 'model')} for {report.get('profile')}"
    body = [
        f"<h1>{escape(title)}</h1>",
        f'<p><span class="badge {"pass" if passed else "fail"}">{"PASSED" if passed else "FAILED"}</span>'
        f'<span class="meta">built {escape(str(report.get("created")))} by edgeprune '
        f'{escape(str(report.get("edgeprune_version")))}</span></p>',
    ]
    body += _budgets(report) + _plan(report) + _generation(report) + _latency(report) + _layers(report)
    body += _widths(report)
    body += _accuracy(report) + _model(report) + _search(report)
    if report.get("notes"):
        body += ["<h2>Notes</h2>", "<ul>" + "".join(f"<li>{escape(n)}</li>" for n in report["notes"]) + "</ul>"]
    body.append("<details><summary>report.json</summary><pre>"
                + escape(json.dumps(report, indent=2)) + "</pre></details>")
    return page(title, body)


def _budgets(report: dict) -> list[str]:
    out = ["<h2>Budgets</h2>"]
    budgets = report.get("budgets") or []
    if not budgets:
        out.append('<p class="note">No budgets were set.</p>')
    else:
        rows = [[b["name"], b["value"], b["limit"], b.get("unit", ""),
                 Markup('<span class="ok">pass</span>' if b["met"] else '<span class="bad">FAIL</span>'),
                 b.get("note", "")] for b in budgets]
        out.append(table(["budget", "value", "limit", "unit", "result", "note"], rows, {1, 2}))
    verified = report.get("artifact", {}).get("verified", {})
    if verified:
        ok = verified.get("passed")
        detail = (f" (max abs diff {fmt(verified.get('max_abs_diff'), 3)}, top-1 agreement "
                  f"{fmt(verified.get('agreement'))} over {fmt(verified.get('samples'))} samples)"
                  if verified.get("method") == "numeric" else f" ({verified.get('detail', '')})")
        out.append(f'<p>Artifact verification ({escape(str(verified.get("method")))}): '
                   f'<span class="{"ok" if ok else "bad"}">{"passed" if ok else "FAILED"}</span>{escape(detail)}.</p>')
    return out


def _plan(report: dict) -> list[str]:
    s, a = report.get("strategy", {}), report.get("artifact", {})
    details = s.get("details", {})
    rows = [["strategy", s.get("kind")], ["sparsity", s.get("sparsity")], ["criterion", s.get("criterion")],
            ["quantization", s.get("quantization")], ["format", a.get("format")], ["precision", a.get("precision")],
            ["artifact", a.get("path")], ["size (bytes)", a.get("size_bytes")]]
    if s.get("nm"):
        rows.insert(2, ["N:M", s["nm"]])
    if details.get("device_strategy"):
        rows.insert(1, ["the device could exploit", details["device_strategy"]])
    out = ["<h2>Plan</h2>", table(None, rows)]
    if s.get("reasons"):
        out += ["<p>Why:</p>", "<ul>" + "".join(f"<li>{escape(r)}</li>" for r in s["reasons"]) + "</ul>"]
    search = report.get("search")
    if search and search.get("chosen"):
        out.append(f'<p class="note">Chosen by the budget search: {escape(search["chosen"])}.</p>')
    return out


def _latency(report: dict) -> list[str]:
    lat = report.get("latency", {})
    out = ["<h2>Latency</h2>"]
    if lat.get("source") not in ("measured", "estimated"):
        return out + [f'<p class="note">{escape(lat.get("note", "no latency"))}</p>']
    measured = lat["source"] == "measured"
    built = {k: lat.get(k) for k in ("min_ms", "p25_ms", "median_ms", "p75_ms", "p90_ms", "p99_ms", "max_ms")}
    built["estimated_ms"] = lat.get("estimated_ms")
    dense = dict(lat.get("baseline") or {})
    if lat.get("baseline_median_ms") is not None:
        dense.setdefault("median_ms", lat["baseline_median_ms"])
    dense["estimated_ms"] = lat.get("baseline_estimated_ms")
    items = [("dense (baseline)", dense, DENSE), ("built", built, BUILT)]
    where = f"{lat.get('source')} on {lat.get('device')}"
    speedup = f", speed-up {fmt(lat.get('speedup'), 3)}x" if lat.get("speedup") else ""
    out.append(f"<p>Median <b>{fmt(lat.get('median_ms'))} ms</b>, p90 {fmt(lat.get('p90_ms'))} ms"
               + (f" over {fmt(lat.get('runs'))} runs" if measured else "")
               + (f"; dense baseline {fmt(lat.get('baseline_median_ms'))} ms" if lat.get("baseline_median_ms") else "")
               + f"{speedup} ({escape(where)}).</p>")
    if measured and lat.get("spread") is not None:
        out.append(f'<p class="note">Spread (how far round medians moved): built {lat["spread"]:.1%}'
                   + (f", dense {dense['spread']:.1%}" if isinstance(dense.get("spread"), (int, float)) else "")
                   + ". A budget inside the spread is undecided.</p>")
    caption = ("single-run latencies measured side by side, dense vs built" if measured else
               "estimated from the profile's roofline (no device attached): one figure each, no spread")
    out.append(figure(distribution_chart(items, "ms", f"Latency, dense vs built ({lat['source']})"), caption))
    if lat.get("stands_in"):
        out.append(f'<p class="note">Measured on {escape(str(lat.get("host")))}: {escape(lat["stands_in"])}.</p>')
    elif lat.get("note"):
        out.append(f'<p class="note">{escape(lat["note"])}</p>')
    return out


def _generation(report: dict) -> list[str]:
    gen = report.get("generation")
    if not gen:
        return []
    out = ["<h2>Generation</h2>"]
    if gen.get("source") == "unavailable":
        return out + [f'<p class="note">{escape(gen.get("note", "not measured"))}</p>']
    p, g = gen["prompt_tokens"], gen["generated_tokens"]
    memory = report.get("memory") or {}
    rows = [[f"pp{p} (prompt tokens/s)", gen.get("prefill_tokens_per_s"), gen.get("estimated_prefill_tokens_per_s")],
            [f"tg{g} (generated tokens/s)", gen.get("decode_tokens_per_s"), gen.get("estimated_decode_tokens_per_s")],
            ["time to first token (ms)", gen.get("ttft_ms"), gen.get("estimated_ttft_ms")],
            ["decode per token, median (ms)", gen.get("decode_ms_median"), None],
            ["decode per token, p90 (ms)", gen.get("decode_ms_p90"), None],
            [f"peak memory at {memory.get('context_tokens')} tokens (MB)", memory.get("peak_mb"), None],
            ["KV cache at that context (MB)", memory.get("kv_cache_mb"), None]]
    out.append(table(["", gen["source"], "estimated"], rows, {1, 2}))
    where = gen.get("stands_in") or gen.get("note") or ""
    out.append(f'<p class="note">{escape(gen["source"])} on {escape(str(gen.get("device")))}'
               + (f", {gen['threads']} threads" if gen.get("threads") else "") + f". {escape(where)}</p>")
    return out


def _layers(report: dict) -> list[str]:
    section = report.get("layers")
    if not section or not section.get("rows"):
        return [] if not section else ["<h2>Per-layer time</h2>", f'<p class="note">{escape(section.get("note", ""))}</p>']
    rows = section["rows"]
    measured = section.get("source") == "measured"
    machine = section.get("machine", "this machine")
    label = ("on this machine, standing in for the device" if section.get("on_target")
             else "HOST PROFILE, not the device's")
    out = ["<h2>Per-layer time</h2>",
           f'<p><b>{escape(label)}</b>: {escape(machine)}'
           + (f", {escape(str(section.get('runtime')))}, {section.get('threads')} threads, mean of "
              f"{section.get('runs')} profiled runs" if measured else "") + ".</p>",
           f'<p class="note">{escape(section.get("note", ""))}</p>']

    def weight(r: dict) -> float:
        return max(r.get(k) or 0.0 for k in ("built_ms", "dense_ms", "built_estimated_ms", "dense_estimated_ms"))

    if measured and all(r["built_ms"] == r["dense_ms"] for r in rows):
        out.append('<p class="note">The build is the dense model itself: one profile fills both columns.</p>')
    top = sorted(rows, key=weight, reverse=True)[:TOP_LAYERS]
    shown = [r for r in rows if r in top]
    if measured:
        out.append(figure(bar_chart([(r["layer"], [r["dense_ms"], r["built_ms"]]) for r in shown],
                                    [("dense", DENSE), ("built", BUILT)], "ms per inference",
                                    f"ONNX Runtime profile on {machine}"),
                          f"sum of each layer's node time in ONNX Runtime's profiler trace; totals: dense "
                          f"{fmt(section.get('dense_ms'))} ms, built {fmt(section.get('built_ms'))} ms "
                          "(the trace counts kernel time only, not the session's own overhead)"))
    out.append(figure(bar_chart([(r["layer"], [r["dense_estimated_ms"], r["built_estimated_ms"]]) for r in shown],
                                [("dense, estimated", EST_DENSE), ("built, estimated", EST_BUILT)], "ms",
                                f"Roofline estimate per fused kernel on profile {section.get('estimate_profile')}"),
                      f"what bounds each kernel is in the table; totals: dense "
                      f"{fmt(section.get('dense_estimated_ms'))} ms, built {fmt(section.get('built_estimated_ms'))} ms"))
    table_rows = [[r["layer"], r["ops"], r["dense_ms"], r["built_ms"], ratio(r["built_ms"], r["dense_ms"]),
                   r["dense_estimated_ms"], r["built_estimated_ms"], r["bound"]] for r in rows]
    out.append("<details><summary>every layer</summary>"
               + table(["layer", "fused ops", "dense ms", "built ms", "built/dense", "dense est. ms",
                        "built est. ms", "bound"], table_rows, {2, 3, 4, 5, 6}) + "</details>")
    return out


def _widths(report: dict) -> list[str]:
    details = report.get("strategy", {}).get("details", {})
    groups = [g for g in details.get("groups", []) if g.get("layers") and g.get("channels") is not None]
    if not groups:
        return []
    rows = [(g["layers"][0], [g["channels"], g.get("channels_after")]) for g in groups]
    unit = groups[0].get("unit", "channel")
    out = ["<h2>Widths before and after pruning</h2>",
           figure(bar_chart(rows, [("before", DENSE), ("after", BUILT)], f"{unit}s",
                            f"{unit.capitalize()}s kept per pruned group"),
                  "each group is a layer and everything coupled to its output channels, pruned together")]
    kept = details.get("kept_whole", [])
    if kept:
        out.append("<p class=\"note\">Kept whole: " + "; ".join(
            escape(f"{', '.join(k.get('layers', []))} ({k.get('reason', '')})") for k in kept) + ".</p>")
    return out


def _accuracy(report: dict) -> list[str]:
    acc = report.get("accuracy", {})
    if not acc:
        return []
    out = ["<h2>Accuracy</h2>",
           f"<p>{escape(str(acc.get('metric', 'metric')))}: dense {fmt(acc.get('baseline'))}, built "
           f"{fmt(acc.get('pruned'))}, drop <b>{fmt(acc.get('drop'))}</b>"
           + (f" (evaluated on the {escape(str(acc['evaluated_on']))})" if acc.get("evaluated_on") else "") + ".</p>"]
    if acc.get("note"):
        out.append(f'<p class="note">{escape(acc["note"])}</p>')
    slices = acc.get("slices")
    if isinstance(slices, list) and slices:
        worst = acc.get("worst_slice")
        worst_name = worst.get("name") if isinstance(worst, dict) else worst
        rows = [[s.get("name"), s.get("baseline"), s.get("value"), s.get("drop")] for s in slices]
        classes = ["worst" if s.get("name") == worst_name else "" for s in slices]
        out += ["<h3>Per-slice drop</h3>",
                table(["slice", "dense", "built", "drop"], rows, {1, 2, 3}, classes)]
        if worst_name is not None:
            out.append(f'<p class="note">Worst slice: {escape(str(worst_name))} (highlighted).</p>')
        drops = [(str(s.get("name")), [s.get("drop")]) for s in slices if isinstance(s.get("drop"), (int, float))]
        if drops and all(d[1][0] >= 0 for d in drops):
            out.append(figure(bar_chart(drops, [("drop", BUILT)], "drop", "Drop per slice"), "dense minus built"))
    return out


def _model(report: dict) -> list[str]:
    m, mem = report.get("model", {}), report.get("memory", {})
    rows = [["parameters", m.get("params_before"), m.get("params_after"), ratio(m.get("params_after"), m.get("params_before"))],
            ["non-zero parameters", m.get("params_before"), m.get("nonzero_params_after"),
             ratio(m.get("nonzero_params_after"), m.get("params_before"))],
            ["MACs", m.get("macs_before"), m.get("macs_after"), ratio(m.get("macs_after"), m.get("macs_before"))]]
    out = ["<h2>Model</h2>", table(["", "before", "after", "ratio"], rows, {1, 2, 3})]
    if mem.get("peak_mb") is not None:
        out.append(f"<p>Peak memory ({escape(mem.get('source', ''))}): {fmt(mem['peak_mb'])} MB "
                   f"(weights {fmt(mem.get('weights_mb'))} MB, activations {fmt(mem.get('activations_peak_mb'))} MB).</p>")
    return out


def _search(report: dict) -> list[str]:
    search = report.get("search")
    if not search or not search.get("candidates"):
        return []
    rows = [[c["candidate"]["label"], c.get("latency_ms"), c.get("latency_source"), c.get("size_bytes"),
             c.get("metric"), c.get("drop"), ", ".join(c.get("misses") or []) or ("error: " + c["error"] if c.get("error") else "")]
            for c in search["candidates"]]
    return ["<h2>Budget search</h2>",
            table(["candidate", "latency ms", "source", "size bytes", "metric", "drop", "misses"], rows, {1, 3, 4, 5})]


def render_sweep_html(summary: dict, pareto_svg: str) -> str:
    """Returns the sweep's report.html: its Pareto plot (SVG) and its table of candidates."""
    title = f"edgeprune sweep: {summary.get('title')}"
    metric = summary.get("metric", "metric")
    rows, classes = [], []
    for r in summary.get("candidates", []):
        front = " / ".join("★" if r.get(k) else "" for k in ("pareto_latency", "pareto_size"))
        rows.append([r["candidate"]["label"], r.get("latency_ms"), r.get("latency_source"),
                     r["size_bytes"] / 1e6 if r.get("size_bytes") else None, r.get("macs"), r.get("metric"),
                     r.get("drop"), front, r.get("error") or ""])
        classes.append("" if r.get("error") is None else "worst")
    body = [f"<h1>{escape(title)}</h1>",
            f'<p class="meta">{len(rows)} candidates; {escape(metric)} is '
            f'{"higher" if summary.get("higher_is_better", True) else "lower"}-is-better</p>',
            "<h2>Pareto fronts</h2>", f"<figure>{pareto_svg}<figcaption>filled: Pareto-optimal (no other candidate "
            "is both cheaper and at least as good); circles measured, triangles estimated</figcaption></figure>",
            "<h2>Candidates</h2>",
            table(["candidate", "latency ms", "source", "size MB", "MACs", metric, "drop", "Pareto (latency / size)",
                   "error"], rows, {1, 3, 4, 5, 6}, classes)]
    return page(title, body)
