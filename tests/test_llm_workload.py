"""Causal-LM workloads: text splits, tokenised windows, perplexity, the transformers extra."""

from __future__ import annotations

import math
import sys

import pytest
import torch

from edgeprune.errors import InputError
from edgeprune.llm.text import pydoc_corpus, split_text
from edgeprune.llm.workload import perplexity, token_windows


def test_pydoc_heldout_text_shares_no_passage_with_the_training_text():
    train, heldout = pydoc_corpus()
    assert len(heldout) > 20_000 and len(train) > 10 * len(heldout)
    shared = [
        heldout[i : i + 80]
        for i in range(0, len(heldout) - 80, 4)
        if sum(c.isalnum() for c in heldout[i : i + 80]) >= 40 and heldout[i : i + 80] in train
    ]
    assert shared == []


def test_split_text_holds_out_the_tail_at_a_line_break():
    text = "".join(f"line {i}\n" for i in range(100))
    train, heldout = split_text(text)
    assert train + heldout == text
    assert heldout.startswith("line ") and 0.05 < len(heldout) / len(text) < 0.15


def test_perplexity_of_a_uniform_predictor_is_the_vocabulary_size():
    windows = token_windows(torch.arange(400) % 50, 20)
    assert windows.shape == (20, 20)
    uniform = lambda ids: torch.zeros(*ids.shape, 50)  # noqa: E731
    assert perplexity(uniform, windows) == pytest.approx(50.0, rel=1e-6)


def test_perplexity_of_a_perfect_predictor_is_one():
    windows = token_windows(torch.arange(400) % 50, 20)

    def oracle(ids):
        logits = torch.full((*ids.shape, 50), -1e4)
        logits.scatter_(2, ((ids + 1) % 50).unsqueeze(-1), 0.0)
        return logits

    assert perplexity(oracle, windows) == pytest.approx(1.0, abs=1e-4)
    assert math.isfinite(perplexity(oracle, windows[:3], batch_size=2))


def test_missing_transformers_names_the_extra(monkeypatch):
    from edgeprune.llm.hf import transformers

    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(InputError, match=r"pip install edgeprune\[llm\]"):
        transformers()


def test_a_directory_without_a_model_is_an_input_error(tmp_path):
    pytest.importorskip("transformers")
    from edgeprune.llm import causal_lm_workload

    with pytest.raises(InputError, match="config.json"):
        causal_lm_workload(tmp_path)
