"""A causal LM pruned streamed from its checkpoint: the in-memory result, bounded memory, resumable after a kill."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("transformers")

import torch  # noqa: E402

from edgeprune.llm import load_causal_lm, prune_causal_lm  # noqa: E402
from edgeprune.llm.stream import prune_checkpoint  # noqa: E402

from conftest import ROOT  # noqa: E402

MAKE = textwrap.dedent("""
    import sys, torch
    from transformers import LlamaConfig, LlamaForCausalLM
    layers, hidden, ffn, folder = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=256, hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=layers,
                         num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=128)
    model = LlamaForCausalLM(config)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    model.half().save_pretrained(folder)
""")
# prunes a checkpoint in a process of its own: its peak RSS, or a kill at a chosen block
PRUNE = textwrap.dedent("""
    import json, os, signal, sys, torch
    from edgeprune.llm.stream import prune_checkpoint
    from edgeprune.device.decode_loop import peak_rss_bytes
    source, target, method, kill_phase, kill_block = sys.argv[1:6]
    calibration = [torch.randint(0, 256, (1, 64), generator=torch.Generator().manual_seed(i)) for i in range(4)]
    def progress(report):
        if report["phase"].startswith(kill_phase) and report["block"] == int(kill_block):
            os.kill(os.getpid(), signal.SIGKILL)
    import transformers.models.llama.modeling_llama  # noqa: F401  (the imports are not the model's memory)
    base = peak_rss_bytes()
    details = prune_checkpoint(source, target, method, 0.3 if method == "structured" else 0.5, calibration,
                               progress=progress)
    print(json.dumps({"base": base, "peak": peak_rss_bytes(), "states": details["calibration"]["states"]}))
""")


def _checkpoint(folder: Path, layers: int, hidden: int = 128, ffn: int = 352) -> Path:
    subprocess.run([sys.executable, "-c", MAKE, str(layers), str(hidden), str(ffn), str(folder)], check=True,
                   cwd=ROOT)
    return folder


def _prune(source: Path, target: Path, method: str, kill: tuple[str, int] = ("never", 0)) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", PRUNE, str(source), str(target), method, kill[0], str(kill[1])],
                          capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    return _checkpoint(tmp_path_factory.mktemp("ckpt") / "llama3", 3)


@pytest.mark.parametrize("method, sparsity, criterion", [("unstructured", 0.5, "wanda"), ("nm", 0.5, "sparsegpt"),
                                                         ("structured", 0.3, "wanda")])
def test_a_streamed_prune_is_the_in_memory_prune(small, tmp_path, method, sparsity, criterion):
    calibration = [torch.randint(0, 256, (1, 32), generator=torch.Generator().manual_seed(i)) for i in range(8)]
    in_memory = prune_causal_lm(load_causal_lm(small), method, sparsity, calibration, criterion=criterion).model
    details = prune_checkpoint(small, tmp_path / "out", method, sparsity, calibration, criterion=criterion)
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) == 4 and details["streamed"]  # a shard a block, one for the rest
    streamed = load_causal_lm(tmp_path / "out")  # from_pretrained reloads the pruned widths
    ids = torch.randint(0, 256, (1, 8), generator=torch.Generator().manual_seed(99))
    with torch.no_grad():
        want, got = in_memory(input_ids=ids).logits, streamed(input_ids=ids).logits
    # the streamed model is stored in the checkpoint's fp16; the in-memory one stays fp32
    assert float((want - got).abs().max()) <= 1e-3 * float(want.abs().max()), method
    if method == "structured":
        assert streamed.config.hidden_size < 128 and details["hidden_width"]["after"] == streamed.config.hidden_size


def test_peak_memory_does_not_grow_with_depth(tmp_path):
    # blocks of 7.1 M weights (28 MB in float32): 8 of them would add 225 MB if the model were loaded
    peaks = {}
    for layers in (2, 8):
        source = _checkpoint(tmp_path / f"deep{layers}", layers, hidden=768, ffn=2048)
        done = _prune(source, tmp_path / f"out{layers}", "unstructured")
        assert done.returncode == 0, done.stderr[-2000:]
        peaks[layers] = json.loads(done.stdout.strip().splitlines()[-1])
    two, eight = peaks[2]["peak"], peaks[8]["peak"]
    block = (4 * 768 * 768 + 3 * 768 * 2048) * 4
    assert abs(eight - two) <= 2 * block, peaks  # six more blocks would be 170 MB more
    assert eight - peaks[8]["base"] < 6 * block, peaks  # about two blocks and the states, not eight
    assert peaks[8]["states"].startswith("in memory")


def test_a_killed_stream_resumes_and_writes_the_same_bytes(small, tmp_path):
    calibration = [torch.randint(0, 256, (1, 64), generator=torch.Generator().manual_seed(i)) for i in range(4)]
    prune_checkpoint(small, tmp_path / "whole", "structured", 0.3, calibration)  # uninterrupted, as PRUNE runs it
    # killed while scoring the hidden channels, then again while pruning, then left to finish
    first = _prune(small, tmp_path / "killed", "structured", ("score", 2))
    second = _prune(small, tmp_path / "killed", "structured", ("prune", 2))
    assert first.returncode == second.returncode == -9
    assert (tmp_path / "killed" / ".partial" / "progress.json").is_file()
    third = _prune(small, tmp_path / "killed", "structured")
    assert third.returncode == 0, third.stderr[-2000:]
    written = sorted(p.name for p in (tmp_path / "whole").iterdir())
    assert written == sorted(p.name for p in (tmp_path / "killed").iterdir()) and ".partial" not in written
    for name in written:
        assert (tmp_path / "whole" / name).read_bytes() == (tmp_path / "killed" / name).read_bytes(), name


def test_calibration_states_over_their_memory_share_are_memory_mapped(small, tmp_path):
    calibration = [torch.randint(0, 256, (1, 32), generator=torch.Generator().manual_seed(i)) for i in range(8)]
    spilled = prune_checkpoint(small, tmp_path / "spilled", "unstructured", 0.5, calibration, memory_mb=0.1)
    kept = prune_checkpoint(small, tmp_path / "kept", "unstructured", 0.5, calibration)
    assert spilled["calibration"]["states"].startswith("memory-mapped")
    assert kept["calibration"]["states"].startswith("in memory")
    for shard in sorted(p.name for p in (tmp_path / "kept").glob("*.safetensors")):
        assert (tmp_path / "kept" / shard).read_bytes() == (tmp_path / "spilled" / shard).read_bytes()


def test_a_pruned_checkpoint_is_lowered_without_loading_it(small, tmp_path):
    from edgeprune.backends.onnx_tools.decoder import write_decoder
    from edgeprune.llm.decoder import CausalLMDecoder, CheckpointDecoder

    calibration = [torch.randint(0, 256, (1, 32), generator=torch.Generator().manual_seed(i)) for i in range(8)]
    prune_checkpoint(small, tmp_path / "pruned", "structured", 0.3, calibration)
    # read block by block from the shards, the int4 decoder is the one the loaded model gives, byte for byte
    streamed = write_decoder(CheckpointDecoder(tmp_path / "pruned", 128), tmp_path / "from-disk", "int4")
    loaded = write_decoder(CausalLMDecoder(load_causal_lm(tmp_path / "pruned"), 128), tmp_path / "from-memory", "int4")
    assert streamed.model.read_bytes() == loaded.model.read_bytes()
    assert streamed.data.read_bytes() == loaded.data.read_bytes()


def test_the_command_line_prunes_and_lowers_a_checkpoint_and_refuses_bad_folders(tmp_path):
    from conftest import run_cli

    small = ROOT / "examples" / "weights" / "tiny_lm"  # calibrated on text through its own tokenizer
    out = tmp_path / "pruned"
    done = run_cli("llm", "prune", str(small), "-o", str(out), "--strategy", "nm", "--calibration-tokens", "256",
                   "--seq-len", "64", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["sparsity"] == 0.5 and (out / "model.safetensors.index.json").is_file()
    again = run_cli("llm", "prune", str(small), "-o", str(out), "--strategy", "nm")
    assert again.returncode == 2 and "choose a new folder" in again.stderr  # a finished checkpoint is not overwritten
    missing = run_cli("llm", "prune", str(tmp_path / "nowhere"), "-o", str(tmp_path / "x"), "--strategy", "nm")
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1
    lowered = run_cli("llm", "export", str(out), "-o", str(tmp_path / "decoder"))
    assert lowered.returncode == 0, lowered.stderr
    assert {"model.onnx", "model.onnx.data", "genai_config.json"} <= {p.name for p in (tmp_path / "decoder").iterdir()}
