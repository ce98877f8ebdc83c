"""Pruning quality on a real (small) language model: the LLaMA-architecture LM of examples/tiny_lm.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("transformers")

from edgeprune import load_workload  # noqa: E402
from edgeprune.llm import causal_lm_workload, prune_causal_lm, reload_max_abs_diff, save_pretrained  # noqa: E402

from conftest import run_cli  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "tiny_lm.py"
WEIGHTS = EXAMPLE.with_name("weights") / "tiny_lm"

pytestmark = pytest.mark.skipif(not (WEIGHTS / "config.json").exists(), reason="tiny LM weights not shipped")


@pytest.fixture(scope="module")
def workload():
    # the example's workload, scored on 48 of its held-out windows to keep the tests quick
    return causal_lm_workload(WEIGHTS, seq_len=128, samples=32, eval_samples=48)


@pytest.fixture(scope="module")
def dense_ppl(workload):
    return workload.evaluate(workload.model)


def ppl_after(workload, method, sparsity, **kwargs) -> float:
    result = prune_causal_lm(workload.model, method, sparsity, workload.calibration, **kwargs)
    return workload.evaluate(result.model)


def test_the_example_file_is_a_causal_lm_workload():
    example = load_workload(EXAMPLE)
    assert example.task == "causal-lm" and example.metric == "perplexity" and not example.higher_is_better
    assert example.example_inputs[0].shape == (1, 128)
    assert len(example.calibration) == 32
    assert example.text.eval_tokens > 10_000


def test_the_tiny_lm_is_a_trained_language_model(dense_ppl):
    # a uniform guess over the 1024 tokens scores 1024
    assert dense_ppl < 80


def test_wanda_raises_perplexity_less_than_magnitude_at_50_percent(workload, dense_ppl):
    wanda = ppl_after(workload, "unstructured", 0.5, criterion="wanda")
    magnitude = ppl_after(workload, "unstructured", 0.5, criterion="magnitude")
    assert dense_ppl < wanda < magnitude
    # measured: Wanda's rise is about half of magnitude's (docs/benchmarks.md)
    assert wanda - dense_ppl < 0.75 * (magnitude - dense_ppl)


def test_least_squares_restoration_lowers_structured_perplexity(workload, dense_ppl):
    restored = ppl_after(workload, "structured", 0.2, restore=True)
    plain = ppl_after(workload, "structured", 0.2, restore=False)
    assert dense_ppl < restored < plain


def test_the_pruned_directory_reloads_with_its_tokenizer(workload, tmp_path):
    result = prune_causal_lm(workload.model, "structured", 0.3, workload.calibration)
    save_pretrained(result.model, tmp_path, tokenizer=workload.text.tokenizer)
    assert reload_max_abs_diff(result.model, tmp_path, workload.example_inputs[0]) < 1e-4
    reloaded = causal_lm_workload(tmp_path, seq_len=128, samples=2, eval_samples=4)
    assert reloaded.evaluate(reloaded.model) == pytest.approx(reloaded.evaluate(result.model), rel=1e-5)


def test_a_text_file_gives_calibration_and_held_out_windows(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("".join(f"The value of x{i} is computed by the function f.\n" for i in range(400)))
    workload = causal_lm_workload(WEIGHTS, text=text, seq_len=32, samples=4, eval_samples=6)
    assert [batch[0].shape for batch in workload.calibration] == [(1, 32)] * 4
    assert workload.text.eval_tokens == 6 * 32
    assert workload.text.source == str(text)
    # better than a uniform guess over the vocabulary (the trained model reads English), never below 1
    assert 1.0 < workload.evaluate(workload.model) < workload.model.lm.config.vocab_size / 4


def test_edgeprune_build_prunes_the_tiny_lm_and_ships_a_loadable_hugging_face_directory(tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "tiny-lm"
    proc = run_cli("build", str(EXAMPLE), "--profile", "x86-avx2", "--strategy", "structured", "--sparsity", "0.2",
                   "--quantize", "none", "-o", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["passed"] and report["artifact"]["verified"]["passed"]
    assert report["model"]["params_after"] < 0.9 * report["model"]["params_before"]
    details = report["strategy"]["details"]
    assert details["ffn_width"]["after"] < details["ffn_width"]["before"] and details["ffn_width"]["after"] % 8 == 0
    accuracy = report["accuracy"]
    assert accuracy["metric"] == "perplexity" and accuracy["pruned"] > accuracy["baseline"]
    hf = report["artifact"]["hf_model"]
    assert hf["reload_max_abs_diff"] < 1e-4 and (out / "hf" / "tokenizer.json").exists()
    reloaded = AutoModelForCausalLM.from_pretrained(str(out / "hf"))
    assert reloaded.config.intermediate_size == details["ffn_width"]["after"]
    assert sum(p.numel() for p in reloaded.parameters()) == report["model"]["params_after"]


def test_hybrid_is_refused_for_a_causal_lm_with_exit_2(tmp_path):
    proc = run_cli("build", str(EXAMPLE), "--profile", "x86-avx2", "--strategy", "hybrid", "--sparsity", "0.3",
                   "-o", str(tmp_path / "out"))
    assert proc.returncode == 2 and "hybrid" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()
