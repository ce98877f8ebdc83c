"""The pictures of report.html as inline SVG: grouped bars and latency distributions, no plotting library.

Written by hand so a build pays nothing for them (no matplotlib import on every build) and
the page needs no font or script: text is plain SVG text in the page's own font.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

WIDTH = 760
LABEL_W = 230
ROW_H = 16
PAD = 8


def _num(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def _axis(x0: float, width: float, top: float, bottom: float, scale: float, unit: str) -> list[str]:
    """Returns the vertical grid lines and tick labels of a linear axis from 0 to ``scale``."""
    out = []
    for i in range(5):
        value = scale * i / 4
        x = x0 + width * i / 4
        out.append(f'<line x1="{x:.1f}" y1="{top:.1f}" x2="{x:.1f}" y2="{bottom:.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{x:.1f}" y="{bottom + 12:.1f}" font-size="10" text-anchor="middle" '
                   f'fill="#555">{_num(value)}</text>')
    out.append(f'<text x="{x0 + width:.1f}" y="{bottom + 24:.1f}" font-size="10" text-anchor="end" '
               f'fill="#555">{escape(unit)}</text>')
    return out


def _nice(top: float) -> float:
    """Returns a round axis end at or above ``top``."""
    if top <= 0:
        return 1.0
    step = 10.0 ** math.floor(math.log10(top))
    for m in (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10):
        if m * step >= top:
            return m * step
    return 10 * step


def _legend(series: Sequence[tuple[str, str]], y: float) -> list[str]:
    out, x = [], LABEL_W
    for name, color in series:
        out.append(f'<rect x="{x}" y="{y - 9}" width="10" height="10" fill="{color}"/>')
        out.append(f'<text x="{x + 14}" y="{y}" font-size="11">{escape(name)}</text>')
        x += 24 + 7 * len(name)
    return out


def short_label(name: str, width: int = 36) -> str:
    """Returns a layer's name as a chart labels it: the last two parts of its ONNX scope, at most ``width`` characters."""
    parts = [p for p in name.split("/") if p]
    short = "/".join(parts[-2:]) if len(parts) > 2 else name
    return short if len(short) <= width else "…" + short[-(width - 1):]


def _svg(height: float, parts: list[str], title: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" role="img" viewBox="0 0 {WIDTH} {height:.0f}" '
            f'width="{WIDTH}" height="{height:.0f}" font-family="sans-serif"><title>{escape(title)}</title>'
            + "".join(parts) + "</svg>")


def bar_chart(rows: Sequence[tuple[str, Sequence[float | None]]], series: Sequence[tuple[str, str]],
              unit: str, title: str) -> str:
    """Returns horizontal grouped bars: one group a row label, one bar a series (None: no bar, 'n/a')."""
    values = [v for _, vs in rows for v in vs if v is not None]
    scale = _nice(max(values, default=0.0))
    plot_w = WIDTH - LABEL_W - 60
    group_h = ROW_H * len(series) + PAD
    top = 40
    bottom = top + group_h * len(rows)
    parts = [f'<text x="4" y="14" font-size="13" font-weight="bold">{escape(title)}</text>',
             *_legend(series, 30), *_axis(LABEL_W, plot_w, top - 4, bottom, scale, unit)]
    for i, (label, vs) in enumerate(rows):
        y = top + i * group_h
        short = short_label(label)
        parts.append(f'<text x="{LABEL_W - 6}" y="{y + group_h / 2 + 3:.1f}" font-size="11" text-anchor="end">'
                     f'<title>{escape(label)}</title>{escape(short)}</text>')
        for j, ((_, color), v) in enumerate(zip(series, vs, strict=True)):
            by = y + j * ROW_H + 1
            if v is None:
                parts.append(f'<text x="{LABEL_W + 2}" y="{by + ROW_H - 5}" font-size="9" fill="#999">n/a</text>')
                continue
            w = plot_w * v / scale if scale else 0
            parts.append(f'<rect x="{LABEL_W}" y="{by:.1f}" width="{max(w, 0.5):.1f}" height="{ROW_H - 3}" '
                         f'fill="{color}"/>')
            parts.append(f'<text x="{LABEL_W + w + 3:.1f}" y="{by + ROW_H - 5:.1f}" font-size="9" '
                         f'fill="#333">{_num(v)}</text>')
    return _svg(bottom + 30, parts, title)


def distribution_chart(items: Sequence[tuple[str, dict, str]], unit: str, title: str) -> str:
    """Returns one row an item: whisker min to p99 (or max), box p25 to p75, median line, p90 tick.

    ``items``: (label, stats with median_ms and any of min/p25/p75/p90/p99/max_ms, colour).
    A stats dict with ``estimated_ms`` also gets a hollow diamond there (the estimator's figure);
    one with only a median (an estimate) is drawn as a single mark.
    """
    def top_of(s: dict) -> float:
        keys = ("max_ms", "p99_ms", "p90_ms", "median_ms", "estimated_ms")
        return max((float(s[k]) for k in keys if isinstance(s.get(k), (int, float))), default=0.0)

    scale = _nice(max((top_of(s) for _, s, _ in items), default=0.0))
    plot_w = WIDTH - LABEL_W - 60
    row = 34
    top = 26
    bottom = top + row * len(items)
    parts = [f'<text x="4" y="14" font-size="13" font-weight="bold">{escape(title)}</text>',
             *_axis(LABEL_W, plot_w, top - 4, bottom, scale, unit)]

    def x(v: float) -> float:
        return LABEL_W + plot_w * v / scale

    for i, (label, s, color) in enumerate(items):
        mid = top + i * row + row / 2
        parts.append(f'<text x="{LABEL_W - 6}" y="{mid + 4:.1f}" font-size="11" text-anchor="end">{escape(label)}</text>')
        low = s.get("min_ms")
        high = s.get("p99_ms") if s.get("p99_ms") is not None else s.get("max_ms")
        if low is not None and high is not None:
            parts.append(f'<line x1="{x(low):.1f}" y1="{mid:.1f}" x2="{x(high):.1f}" y2="{mid:.1f}" stroke="{color}"/>')
            for end in (low, high):
                parts.append(f'<line x1="{x(end):.1f}" y1="{mid - 5:.1f}" x2="{x(end):.1f}" y2="{mid + 5:.1f}" '
                             f'stroke="{color}"/>')
        if s.get("p25_ms") is not None and s.get("p75_ms") is not None:
            parts.append(f'<rect x="{x(s["p25_ms"]):.1f}" y="{mid - 9:.1f}" '
                         f'width="{max(x(s["p75_ms"]) - x(s["p25_ms"]), 1):.1f}" height="18" fill="{color}" '
                         f'fill-opacity="0.35" stroke="{color}"/>')
        if s.get("p90_ms") is not None and s.get("p25_ms") is not None:
            parts.append(f'<line x1="{x(s["p90_ms"]):.1f}" y1="{mid - 7:.1f}" x2="{x(s["p90_ms"]):.1f}" '
                         f'y2="{mid + 7:.1f}" stroke="{color}" stroke-dasharray="2,2"/>')
        if s.get("median_ms") is not None:
            m = x(s["median_ms"])
            parts.append(f'<line x1="{m:.1f}" y1="{mid - 11:.1f}" x2="{m:.1f}" y2="{mid + 11:.1f}" stroke="{color}" '
                         f'stroke-width="3"/>')
            parts.append(f'<text x="{m + 4:.1f}" y="{mid - 11:.1f}" font-size="9">{_num(s["median_ms"])}</text>')
        if s.get("estimated_ms") is not None:
            e = x(s["estimated_ms"])
            parts.append(f'<path d="M{e:.1f},{mid - 6:.1f} L{e + 6:.1f},{mid:.1f} L{e:.1f},{mid + 6:.1f} '
                         f'L{e - 6:.1f},{mid:.1f} Z" fill="none" stroke="#222"/>')
    legend_y = bottom + 36
    parts.append(f'<text x="{LABEL_W}" y="{legend_y}" font-size="10" fill="#555">thick line: median · box: 25th–75th '
                 'percentile · dashed: p90 · whiskers: min to p99 · ◇ roofline estimate for the profile</text>')
    return _svg(legend_y + 8, parts, title)
