"""How each pruning method spreads its perplexity loss across the languages of a multilingual LM.

Prunes the multilingual tiny LM of ``examples/multilingual_lm.py`` with magnitude, Wanda and
SparseGPT at 50% unstructured, 2:4, and width (structured) pruning, then scores every
language's held-out excerpt. Writes the ``## Multilingual LM: pruning loss per language``
section of docs/benchmarks.md (other sections are left alone).

    python benchmarks/multilingual_lm.py     # about a minute on two cores
"""

from __future__ import annotations

import os
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "examples"))

import multilingual_lm  # noqa: E402
from llm_pruning import TINY_RUNS  # noqa: E402
from train_multilingual_lm import LANGUAGES as TRAINING  # noqa: E402
from writeup import machine, write_section  # noqa: E402

from edgeprune.llm import prune_causal_lm  # noqa: E402

SECTION = "## Multilingual LM: pruning loss per language"

RUNS = [
    # (label, method, sparsity, keyword arguments): the tiny LM's unstructured and 2:4 runs, then width
    *(run for run in TINY_RUNS if run[1] != "structured"),
    ("width 30%, least squares", "structured", 0.3, {"restore": True}),
    ("width 50%, least squares", "structured", 0.5, {"restore": True}),
]


NOTES = [
    "- Perplexity is per token, and the tokenizer, trained on the mixed text, cuts the less-trained "
    "languages finer (the held-out excerpts are all about 8 KB, their token counts are above), so "
    "dense perplexities compare across languages only loosely; the rises are what this table is for.",
    "- Each language is one excerpt of a few thousand tokens from a handful of held-out pages; how "
    "much another choice of pages would move a rise was not measured, so differences of a point or "
    "two between languages are not to be read as a ranking.",
    "- Calibration (Wanda's input norms, SparseGPT's Hessians, the width scores and the least-squares "
    "refit) is drawn from the training mix, half of it English.",
    "- Width S% removes S% of every width: the hidden width (the residual stream, with the "
    "embeddings, every norm and the LM head), whole key/value groups and FFN neurons, each to what "
    "LLaMA's config accepts, so the block weights lose about 1 - (1 - S)^2 (the second column). "
    "Nothing is recovered after pruning here: the hidden width's loss shows in full, and "
    "`--recover` is what a build adds.",
]


def spread(rises: list[float]) -> tuple[float, float, float]:
    """Returns (largest rise / smallest rise, standard deviation, std / mean) of the languages' rises."""
    low = min(rises)
    std = statistics.pstdev(rises)
    mean = statistics.fmean(rises)
    return (max(rises) / low if low > 0 else float("inf")), std, (std / mean if mean > 0 else float("inf"))


def measure() -> tuple[dict[str, float], list[tuple[str, float, dict[str, float]]], dict]:
    """Returns (dense scores, [(label, block sparsity, heads and FFN width, scores)], facts for the table)."""
    workload = multilingual_lm.workload()
    dense = workload.evaluate(workload.model)
    config = workload.model.lm.config
    extras = {"dense_shape": f"{config.num_attention_heads}/{config.num_key_value_heads}, {config.intermediate_size}",
              "slice_tokens": dict(workload.text.slice_tokens), "seq_len": workload.text.seq_len}
    print("dense", {k: round(v, 3) for k, v in dense.items()}, flush=True)
    rows = []
    for label, method, sparsity, kwargs in RUNS:
        result = prune_causal_lm(workload.model, method, sparsity, workload.calibration, **kwargs)
        scores = workload.evaluate(result.model)
        d = result.details
        shape = f"{'/'.join(str(h) for h in d['heads']['after'])}, {d['ffn_width']['after']}"
        rows.append((label, d["block_sparsity"], shape, scores))
        print(label, {k: round(v, 3) for k, v in scores.items()}, flush=True)
    return dense, rows, extras


def table(dense: dict[str, float], rows, extras: dict) -> list[str]:
    """Returns the markdown lines of the per-language table and the spread summary."""
    languages = list(multilingual_lm.LANGUAGES)
    lines = [
        "| method | block weights pruned | heads (q/kv), FFN | overall | " + " | ".join(languages)
        + " | max/min rise | std of rise | std / mean |",
        "|---" * (len(languages) + 7) + "|",
        "| training text | — | — | — | " + " | ".join(f"{TRAINING[k][2] // 1000} KB" for k in languages) + " | — | — | — |",
        "| held-out tokens | — | — | — | " + " | ".join(f"{extras['slice_tokens'][k]:,}" for k in languages) + " | — | — | — |",
        f"| dense | 0% | {extras['dense_shape']} | " + " | ".join(f"{dense[k]:.2f}" for k in ["overall", *languages])
        + " | — | — | — |",
    ]
    summary = []
    for label, sparsity, shape, scores in rows:
        rises = [scores[k] / dense[k] - 1 for k in languages]
        ratio, std, cv = spread(rises)
        cells = [f"{scores['overall']:.2f} ({scores['overall'] / dense['overall'] - 1:+.1%})"]
        cells += [f"{scores[k]:.2f} ({rise:+.1%})" for k, rise in zip(languages, rises, strict=True)]
        lines.append(f"| {label} | {sparsity:.1%} | {shape} | " + " | ".join(cells) + f" | {ratio:.2f} | {std:.1%} | {cv:.2f} |")
        summary.append({"label": label, "ratio": ratio, "std": std, "cv": cv,
                        "high": languages[rises.index(max(rises))], "low": languages[rises.index(min(rises))]})

    def extremes(key: str, fmt: str) -> str:
        worst, best = max(summary, key=lambda r: r[key]), min(summary, key=lambda r: r[key])
        return f"least even {worst['label']} ({fmt.format(worst[key])}), most even {best['label']} ({fmt.format(best[key])})"

    by_ratio = max(summary, key=lambda r: r["ratio"])
    most, least = languages[0], languages[-1]
    hit = [label for label, _, _, scores in rows if scores[most] / dense[most] > scores[least] / dense[least]]
    return lines + [
        "",
        f"By max/min rise: {extremes('ratio', '{:.2f}')}; {by_ratio['label']}'s largest rise is on "
        f"{by_ratio['high']}, its smallest on {by_ratio['low']}. By std of rise: {extremes('std', '{:.1%}')}. "
        f"By std / mean: {extremes('cv', '{:.2f}')}. Highest rise per method: "
        + "; ".join(f"{r['label']}: {r['high']}" for r in summary) + ".",
        "",
        f"The language with the most training text ({most}) lost more, relatively, than the one with the "
        f"least ({least}) under {len(hit)} of the {len(rows)} methods"
        + (f" (all but {', '.join(r[0] for r in rows if r[0] not in hit)})." if 0 < len(hit) < len(rows) else "."),
        "",
        *NOTES,
    ]


def main() -> None:
    load = os.getloadavg()[0]
    dense, rows, extras = measure()
    lines = [
        f"Machine: {machine()}; torch {torch.__version__} ({torch.get_num_threads()} threads); "
        f"load average {load:.1f} when the run started (the machine is shared).",
        "Written by `python benchmarks/multilingual_lm.py`.",
        "",
        "The tiny LM of `examples/multilingual_lm.py` (LLaMA architecture, 4 blocks, width 128, 8 query "
        "heads in 4 key/value groups, SwiGLU 256, byte-level BPE of 1024 tokens), trained by "
        "`examples/train_multilingual_lm.py` on Debian's manual pages: English from the Linux man-pages "
        "project (`manpages`, `manpages-dev`; mostly the Linux-man-pages-copyleft licence), German, "
        "French, Spanish, Polish and Italian from the manpages-l10n translations (`manpages-de` ... "
        "`manpages-it`; GPL-3+). Perplexity per language on its held-out excerpt "
        f"(`examples/data/multilingual/`, about 8 KB each), sequence length {extras['seq_len']}; "
        f"{32} calibration sequences from the training mix; cell: perplexity (rise over dense). "
        "Every method at 50% of the block weights where it can be (unstructured and 2:4 zero half; "
        "width pruning removes heads and FFN neurons, at 30% and at 50%). Measured; no fine-tuning "
        "after pruning. \"overall\" pools every language's tokens. Rises are relative "
        "(pruned / dense - 1); max/min rise is the largest language's rise over the smallest's, "
        "std the population standard deviation of the six rises, std / mean that over their mean (the "
        "spread with the size of the loss factored out).",
        "",
        *table(dense, rows, extras),
    ]
    write_section(SECTION, "\n".join([SECTION, "", *lines]))
    print(f"wrote {ROOT / 'docs' / 'benchmarks.md'}")


if __name__ == "__main__":
    main()
