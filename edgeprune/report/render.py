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
    checked = verified.get("generation")
    if checked:
        lines += [f"Verified as a generator: a {checked['prompt_tokens']}-token prompt and {checked['decode_steps']} "
                  f"cached decode steps against PyTorch's full forward, relative logit difference "
                  f"{fmt(checked['rel_diff'], 3)}; greedy tokens {'equal PyTorch' if checked['greedy_equal'] else 'differ'}"
                  f" ({checked['greedy_agreement']:.0%} of steps the same).", ""]
    if lat:
        lines += [
            f"Latency ({lat.get('source')}, {lat.get('device')}): median {fmt(lat.get('median_ms'))} ms, "
            f"p90 {fmt(lat.get('p90_ms'))} ms over {fmt(lat.get('runs'))} runs"
            + (f", spread {lat['spread']:.1%}" if lat.get("spread") is not None else "")
            + (" (how much slower than when fastest its device ran while probed)"
               if lat.get("spread") is not None and lat.get("source") == "estimated" else "")
            + (f"; dense fp32 baseline {fmt(lat.get('baseline_median_ms'))} ms, speed-up {fmt(lat.get('speedup'), 3)}x"
               if lat.get("baseline_median_ms") else "")
            + ".",
            "",
        ]
        if lat.get("stands_in"):
            lines += [f"Measured on {lat.get('host')}: {lat['stands_in']}.", ""]
        elif lat.get("source") != "measured" and lat.get("note"):
            lines += [lat["note"][:1].upper() + lat["note"][1:].rstrip(".") + ".", ""]
    lines += generation_lines(report.get("generation"), report.get("memory") or {})
    if acc:
        headline = f" ({acc['overall']})" if acc.get("overall") else ""
        lines += [
            f"{acc.get('metric', 'metric')}{headline}: dense {fmt(acc.get('baseline'))}, built "
            f"{fmt(acc.get('pruned'))}, drop {fmt(acc.get('drop'))}" + (f" ({acc['note']})" if acc.get("note") else "")
            + (f"; inputs: {acc['inputs']}" if acc.get("inputs") else "")
            + ".",
            "",
        ]
        lines += slice_table(acc)
    lines += search_table(report.get("search"))
    if report.get("budgets"):
        lines += ["| budget | limit | value | met |", "|---|---|---|---|"]
        for b in report["budgets"]:
            name = b["name"] + (f" (slice {b['slice']})" if b.get("slice") is not None else "")
            lines.append(f"| {name} | {fmt(b['limit'])} | {fmt(b['value'])} | "
                         f"{'yes' if b['met'] else '**no**'}{' — ' + b['note'] if b.get('note') else ''} |")
        lines.append("")
    if report.get("notes"):
        lines += ["Notes:", *[f"- {n}" for n in report["notes"]], ""]
    return "\n".join(lines)


def generation_lines(gen: dict | None, memory: dict) -> list[str]:
    """Returns report.md's lines on a causal LM's generation: pp/tg tokens per second, TTFT, memory at the context."""
    if not gen:
        return []
    if gen.get("source") == "unavailable":
        return [f"Generation: not measured ({gen.get('note', 'no KV cache')}).", ""]
    p, g = gen["prompt_tokens"], gen["generated_tokens"]
    lines = [f"Generation ({gen['source']}, {gen['device']}): pp{p} **{fmt(gen.get('prefill_tokens_per_s'))}** "
             f"tokens/s, tg{g} **{fmt(gen.get('decode_tokens_per_s'))}** tokens/s, time to first token "
             f"{fmt(gen.get('ttft_ms'))} ms, decode per token median {fmt(gen.get('decode_ms_median'))} ms, "
             f"p90 {fmt(gen.get('decode_ms_p90'))} ms"
             + (f", {gen['threads']} threads" if gen.get("threads") else "")
             + (f", spread {gen['spread']:.1%}" if gen.get("spread") is not None and gen["source"] == "measured"
                else "") + "."]
    if gen["source"] == "measured":
        lines.append(f"Estimated from the profile: pp{p} {fmt(gen.get('estimated_prefill_tokens_per_s'))}, "
                     f"tg{g} {fmt(gen.get('estimated_decode_tokens_per_s'))} tokens/s "
                     f"(error {', '.join(f'{k} {v:+.0%}' for k, v in (gen.get('estimate_error') or {}).items())}).")
    elif gen.get("note"):
        lines.append(gen["note"][:1].upper() + gen["note"][1:].rstrip(".") + ".")
    if memory.get("context_tokens"):
        lines.append(f"Memory at {memory['context_tokens']} tokens of context ({memory.get('source')}): peak "
                     f"{fmt(memory.get('peak_mb'))} MB, weights {fmt(memory.get('weights_mb'))} MB, KV cache "
                     f"{fmt(memory.get('kv_cache_mb'))} MB.")
    return [*lines, ""]


def slice_table(acc: dict) -> list[str]:
    """Returns the per-slice lines of report.md: each slice's dense and built value and drop, the worst marked."""
    if not acc.get("slices"):
        return []
    lines = [f"Slices of {acc.get('metric', 'the metric')} (the worst marked ◀):", "",
             "| slice | dense | built | drop |", "|---|---|---|---|"]
    for r in acc["slices"]:
        mark = " ◀" if r["name"] == acc.get("worst_slice") else ""
        lines.append(f"| {r['name']} | {fmt(r['baseline'])} | {fmt(r['value'])} | {r['drop']:+.4g}{mark} |")
    return [*lines, ""]


def search_table(search: dict | None) -> list[str]:
    """Returns the lines of report.md that show the candidates the budget search tried, in the order tried."""
    if not search or not search.get("candidates"):
        return []
    lines = [f"Search: chose **{search.get('chosen') or 'none (the nearest is built)'}** "
             "(quick timings; the chosen one is measured again above).", "",
             "| candidate | latency ms | size MB | metric | worst slice | misses |", "|---|---|---|---|---|---|"]
    for c in search["candidates"]:
        label = c["candidate"]["label"] + (f" (recovered, {c['recovered_steps']} steps)" if c.get("recovered_steps")
                                           else "")
        worst = (f"{c['worst_slice']} ({c['worst_slice_drop']:+.3g})" if c.get("worst_slice") is not None
                 and c.get("worst_slice_drop") is not None else "—")
        size = f"{c['size_bytes'] / 1e6:.2f}" if c.get("size_bytes") else "—"
        misses = c.get("error") or ", ".join(c.get("misses") or []) or "none"
        lines.append(f"| {label} | {fmt(c.get('latency_ms'))} | {size} | {fmt(c.get('metric'))} | {worst} | "
                     f"{misses} |")
    return [*lines, ""]
