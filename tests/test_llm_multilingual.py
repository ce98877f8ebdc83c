"""The multilingual tiny LM of examples/multilingual_lm.py: shipped weights, perplexity per language."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from edgeprune import load_workload  # noqa: E402
from edgeprune.errors import InputError  # noqa: E402
from edgeprune.llm import causal_lm_workload  # noqa: E402
from edgeprune.llm.workload import perplexity, slice_perplexities, token_windows  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "multilingual_lm.py"
WEIGHTS = EXAMPLE.with_name("weights") / "multilingual_lm"
DATA = EXAMPLE.with_name("data") / "multilingual"
LANGUAGES = {"en", "de", "fr", "es", "pl", "it"}
SEQ_LEN = 128


@pytest.fixture(scope="module")
def workload():
    return load_workload(EXAMPLE)


@pytest.fixture(scope="module")
def scores(workload):
    return workload.evaluate(workload.model)


def test_the_shipped_model_is_small_and_loads_as_a_causal_lm_workload(workload):
    assert sum(f.stat().st_size for f in WEIGHTS.iterdir()) < 2_000_000
    assert workload.task == "causal-lm" and workload.metric == "perplexity" and not workload.higher_is_better
    assert workload.example_inputs[0].shape == (1, SEQ_LEN) and len(workload.calibration) == 32
    assert set(workload.text.slice_tokens) == LANGUAGES
    assert all(tokens >= 10 * SEQ_LEN for tokens in workload.text.slice_tokens.values())


def test_evaluate_gives_a_finite_perplexity_for_every_language_and_the_pooled_overall(workload, scores):
    assert set(scores) == LANGUAGES | {"overall"}
    # trained: far below the 1024 of a uniform guess over the vocabulary, and never below 1
    assert all(math.isfinite(v) and 1.0 < v < 1024 / 4 for v in scores.values()), scores
    # pooled: exp of the token-weighted mean log-perplexity of the slices
    predicted = {k: n // SEQ_LEN * (SEQ_LEN - 1) for k, n in workload.text.slice_tokens.items()}
    pooled = math.exp(sum(predicted[k] * math.log(scores[k]) for k in LANGUAGES) / sum(predicted.values()))
    assert scores["overall"] == pytest.approx(pooled, rel=1e-6)
    assert min(scores[k] for k in LANGUAGES) < scores["overall"] < max(scores[k] for k in LANGUAGES)


def test_the_language_trained_on_most_text_scores_best(scores):
    # 512 KB of English against 16 KB of Italian in training
    assert scores["en"] < scores["it"]


def test_the_held_out_excerpts_share_no_line_with_the_calibration_text():
    calibration = set((DATA / "calibration.txt").read_text(encoding="utf-8").splitlines())
    for language in LANGUAGES:
        lines = [line for line in (DATA / f"{language}.txt").read_text(encoding="utf-8").splitlines() if len(line) >= 24]
        assert len(lines) > 20 and not calibration.intersection(lines), language


def test_without_eval_texts_evaluate_still_returns_one_float():
    single = causal_lm_workload(WEIGHTS, text=DATA / "calibration.txt", seq_len=SEQ_LEN, samples=2, eval_samples=4)
    value = single.evaluate(single.model)
    assert isinstance(value, float) and 1.0 < value < 1024
    assert not single.text.slice_tokens


def test_pooled_perplexity_is_the_perplexity_of_all_windows_together():
    windows = {"a": token_windows(torch.arange(300) % 7, 20), "b": token_windows(torch.arange(500) % 50, 20)}

    def predict(ids):  # certain of "next = id + 1 (mod 7)", which is right on slice a only
        logits = torch.zeros(*ids.shape, 50)
        logits.scatter_(2, ((ids + 1) % 7).unsqueeze(-1), 8.0)
        return logits

    scores = slice_perplexities(predict, windows)
    assert scores["a"] < 1.1 < 50 < scores["b"]
    assert scores["overall"] == pytest.approx(perplexity(predict, torch.cat(list(windows.values()))), rel=1e-6)


@pytest.mark.parametrize(
    "eval_texts, message",
    [
        ({"overall": ["some text"]}, "overall"),
        ({"en": ["too short"]}, "too short"),
        ({"en": "a bare string"}, "list of strings"),
        ({}, "non-empty mapping"),
    ],
)
def test_bad_eval_texts_are_input_errors(eval_texts, message):
    with pytest.raises(InputError, match=message):
        causal_lm_workload(WEIGHTS, text=DATA / "calibration.txt", seq_len=SEQ_LEN, samples=2, eval_texts=eval_texts)


def test_a_build_reports_every_language_and_gates_the_worst(tmp_path, capsys):
    # 2:4 raises every language's perplexity by a few points; a limit of half a point must fail
    from conftest import run_main

    out = tmp_path / "lm"
    code, _, err = run_main(["build", str(EXAMPLE), "--profile", "x86-avx2", "--strategy", "nm",
                             "--criterion", "magnitude", "--max-slice-drop", "0.5", "-o", str(out)], capsys)
    assert code == 3, err
    report = json.loads((out / "report.json").read_text())
    accuracy = report["accuracy"]
    assert accuracy["metric"] == "perplexity" and accuracy["overall"] == "given"
    slices = {s["name"]: s for s in accuracy["slices"]}
    assert set(slices) == {"en", "de", "fr", "es", "pl", "it"}
    for s in slices.values():
        assert math.isfinite(s["value"]) and s["drop"] == pytest.approx(s["value"] - s["baseline"], abs=1e-3)
    worst = max(slices.values(), key=lambda s: s["drop"])["name"]
    assert accuracy["worst_slice"] == worst and f"slice '{worst}'" in err
