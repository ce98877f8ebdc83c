"""The sweep's Pareto plot: metric against latency and against size, the fronts filled."""

from __future__ import annotations

import io
from pathlib import Path


def write_pareto(rows: list[dict], path: Path, metric: str, title: str) -> str:
    """Returns the sweep's Pareto plot as SVG text (for report.html) after writing it as a PNG to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    panels = (("latency_ms", "latency (ms)", "pareto_latency"), ("size_bytes", "size (MB)", "pareto_size"))
    colors = {"none": "black", "structured": "tab:blue", "unstructured": "tab:orange", "nm": "tab:green",
              "hybrid": "tab:purple"}
    for ax, (key, label, front_key) in zip(axes, panels, strict=True):
        pts = [r for r in rows if r[key] is not None and r["metric"] is not None]
        for r in pts:
            x = r[key] / 1e6 if key == "size_bytes" else r[key]
            kind = r["candidate"]["kind"] if r["candidate"]["sparsity"] > 0 or r["candidate"]["kind"] == "nm" else "none"
            marker = "o" if r["latency_source"] == "measured" or key == "size_bytes" else "^"
            filled = r[front_key]
            ax.scatter(x, r["metric"], marker=marker, s=70 if filled else 40,
                       facecolors=colors.get(kind, "gray") if filled else "none",
                       edgecolors=colors.get(kind, "gray"), linewidths=1.5, zorder=3)
            q = r["candidate"]["quantize"]
            ax.annotate(f"{r['candidate']['sparsity']:.2g}" + ("" if q == "none" else f" {q}"), (x, r["metric"]),
                        fontsize=7, xytext=(4, 3), textcoords="offset points")
        front = sorted((r[key] / 1e6 if key == "size_bytes" else r[key], r["metric"]) for r in pts if r[front_key])
        if front:
            ax.plot(*zip(*front, strict=True), color="gray", linestyle="--", linewidth=1, zorder=2)
        ax.set_xlabel(label)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], marker="o", linestyle="", color=c, label=k) for k, c in colors.items()]
    handles += [plt.Line2D([], [], marker="o", linestyle="", markerfacecolor="none", color="gray", label="measured"),
                plt.Line2D([], [], marker="^", linestyle="", markerfacecolor="none", color="gray", label="estimated"),
                plt.Line2D([], [], marker="o", linestyle="", color="gray", label="Pareto-optimal (filled)")]
    fig.legend(handles=handles, loc="lower center", ncol=8, fontsize=8, frameon=False)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    svg = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "path"}):  # text as outlines: the page needs no font
        fig.savefig(svg, format="svg")
    plt.close(fig)
    tmp.replace(path)
    text = svg.getvalue()
    return text[text.index("<svg"):]
