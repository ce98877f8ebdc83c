"""A tiny LLaMA-architecture LM of six languages, scored per language: who pays for pruning.

Trained with the recipe of ``examples/tiny_lm.py`` (``edgeprune.llm.train``) on Debian's
manual pages rendered to plain text: English from the Linux man-pages project (Debian
packages ``manpages`` and ``manpages-dev``; mostly the "Linux-man-pages-copyleft" licence,
some pages GPL or BSD), German, French, Spanish, Polish and Italian from the manpages-l10n
translations (``manpages-de``, ``-fr``, ``-es``, ``-pl``, ``-it``; GPL-3+). The training
budgets halve down that list, from 512 KB of English to 16 KB of Italian, so the model knows
some languages far better than others. The model: 4 blocks, width 128, 8 query heads in 4
key/value groups, SwiGLU of 256, byte-level BPE of 1024 tokens trained on the mixed text.

Shipped, so nothing here needs the Debian packages: the weights in
``examples/weights/multilingual_lm/`` (fp16 safetensors), a held-out excerpt per language
and the calibration text (training text in the training mix) in ``examples/data/multilingual/``
(sources and licences in its NOTICE). ``examples/train_multilingual_lm.py`` rebuilds all of
it from the packages. ``evaluate`` returns ``{"overall": pooled perplexity, "en": ..., ...}``.

    python examples/multilingual_lm.py     # the dense model's perplexity per language
"""

from __future__ import annotations

from pathlib import Path

import edgeprune
from edgeprune.errors import InputError
from edgeprune.llm import causal_lm_workload

HERE = Path(__file__).resolve().parent
WEIGHTS = HERE / "weights" / "multilingual_lm"
DATA = HERE / "data" / "multilingual"
LANGUAGES = ("en", "de", "fr", "es", "pl", "it")  # most training text first
SEQ_LEN = 128


def eval_texts() -> dict[str, list[str]]:
    """Returns the held-out excerpt of each language, language to a list of one text."""
    return {language: [(DATA / f"{language}.txt").read_text(encoding="utf-8")] for language in LANGUAGES}


def workload(samples: int = 32, eval_samples: int | None = None) -> edgeprune.Workload:
    """Returns the multilingual LM's workload: 32 calibration sequences, every held-out window scored."""
    if not (WEIGHTS / "config.json").exists():
        raise InputError(
            f"{WEIGHTS} is missing: run examples/train_multilingual_lm.py on Debian with the manpages packages"
        )
    return causal_lm_workload(
        WEIGHTS,
        text=DATA / "calibration.txt",
        seq_len=SEQ_LEN,
        samples=samples,
        eval_samples=eval_samples,
        eval_texts=eval_texts(),
        name="multilingual_lm",
    )


if __name__ == "__main__":
    import torch

    w = workload()
    with torch.no_grad():
        scores = w.evaluate(w.model)
    for key, value in scores.items():
        tokens = w.text.slice_tokens.get(key, w.text.eval_tokens)
        print(f"{key:8s} perplexity {value:8.3f} over {tokens:,} tokens")
