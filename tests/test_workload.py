import pytest

from edgeprune import InputError, Workload, load_workload

from conftest import DIGITS, ROOT, run_cli


def test_digits_workload_is_real_data_and_accurate():
    w = load_workload(DIGITS)
    assert w.example_inputs[0].shape == (1, 1, 32, 32)
    assert w.metric == "accuracy" and w.higher_is_better
    assert len(w.calibration) >= 8
    scores = w.evaluate(lambda x: w.model(x))  # overall accuracy and each digit's
    assert scores["overall"] >= 0.97 and sorted(scores) == sorted(["overall", *(f"digit {d}" for d in range(10))])
    assert all(scores[f"digit {d}"] >= 0.9 for d in range(10))


def test_spec_with_function_name(tmp_path):
    f = tmp_path / "two.py"
    f.write_text(
        "import torch, edgeprune\n"
        "def small():\n"
        "    return edgeprune.Workload(model=torch.nn.Linear(4, 2), example_inputs=(torch.randn(1, 4),))\n"
    )
    assert isinstance(load_workload(f"{f}:small"), Workload)
    with pytest.raises(InputError, match=r"no function workload\(\)"):
        load_workload(f)


@pytest.mark.parametrize("body, message", [
    ("raise RuntimeError('boom')", "failed to load: RuntimeError: boom"),
    ("def workload():\n    return 42", "returned int, not an edgeprune.Workload"),
    ("import torch, edgeprune\ndef workload():\n    return edgeprune.Workload(model=torch.nn.Linear(2, 2), example_inputs=())",
     "example_inputs must be a non-empty tuple"),
])
def test_bad_workloads_are_one_line_input_errors(tmp_path, body, message):
    f = tmp_path / "bad.py"
    f.write_text(body + "\n")
    with pytest.raises(InputError, match=message):
        load_workload(f)


def test_cli_reports_a_missing_workload_file_with_exit_2(tmp_path):
    proc = run_cli("build", str(tmp_path / "nope.py"), "--profile", "x86-avx2", "-o", str(tmp_path / "o"))
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "workload file not found" in proc.stderr
    assert not (tmp_path / "o").exists()
    assert ROOT.exists()


def test_the_task_is_decided_once_when_the_workload_is_made():
    import torch
    import transformers
    from wrapped_lm import Logits

    linear = torch.nn.Linear(4, 2)
    assert Workload(model=linear, example_inputs=(torch.randn(1, 4),)).task == "classification"
    assert Workload(model=linear, example_inputs=(torch.randn(1, 4),), task="other").task == "other"
    with pytest.raises(InputError, match="task must be one of"):
        Workload(model=linear, example_inputs=(torch.randn(1, 4),), task="detection")
    # a hand-written decoder is not a transformers causal LM: the block-wise path would fail on it
    with pytest.raises(InputError, match="hand-written decoder is task 'other'"):
        Workload(model=linear, example_inputs=(torch.randn(1, 4),), task="causal-lm")
    # a transformers causal LM, however wrapped and whatever the user wrote, is one
    config = transformers.LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=1)
    lm = Logits(transformers.LlamaForCausalLM(config))
    made = Workload(model=lm, example_inputs=(torch.zeros(1, 4, dtype=torch.long),), task="other")
    assert made.task == "causal-lm" and made.is_causal_lm
