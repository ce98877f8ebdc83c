"""Big LLMs on a small machine: a LLaMA-2-7B-shaped checkpoint pruned streamed, block by block, in bounded memory.

The checkpoint is LLaMA-2-7B's published config (32 layers, hidden 4096, 32 heads, SwiGLU
11008, vocabulary 32000) with random fp16 weights (about 13.5 GB), made once by
benchmarks/llm_checkpoint.py and reused; a TinyLlama-1.1B-shaped one beside it. Each prune
runs in a process of its own (`edgeprune.llm.stream.prune_checkpoint`), whose peak RSS is
read from the process (VmHWM), with 2,048 calibration tokens of the interpreter's own text
(`pydoc_data.topics`) through the checkpoint's tokenizer. Then: the pruned checkpoint's
index and shapes checked against the model transformers builds from its config (on the meta
device), the int4 decoder lowered from the pruned checkpoint block by block (its peak RSS
too), and a forward pass of 8 tokens compared between the streamed and the in-memory prune
of the model truncated to 2 blocks.

    .venv/bin/python benchmarks/llm_big.py [--skip-7b] [--json out/llm_big.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from llm_checkpoint import tinyllama_checkpoint  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path.home() / ".cache" / "edgeprune-bench"
# meta-llama/Llama-2-7b-hf config.json (model card): the widths; rope, norms and vocabulary as TinyLlama's
LLAMA2_7B = {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
             "num_key_value_heads": 32, "max_position_embeddings": 4096}
CALIBRATION_TOKENS, SEQ = 2048, 256
RUNS = [("Wanda 2:4", "nm", 0.5, "wanda"), ("width 30%", "structured", 0.3, "wanda")]

PRUNE = """
import json, sys, time, torch
from edgeprune.llm.stream import prune_checkpoint
from edgeprune.device.decode_loop import peak_rss_bytes
source, target, method, sparsity, criterion, ids = sys.argv[1:7]
calibration = torch.load(ids)
start = time.perf_counter()
def progress(r):
    print(f"{r['phase']} {r['block']}/{r['blocks']} {r['seconds']:.1f} s, {r['tokens_per_s'] or 0:.0f} tokens/s, "
          f"{r['left_s'] / 60:.1f} min left, peak {r['peak_rss_bytes'] / 1e9:.2f} GB", file=sys.stderr, flush=True)
details = prune_checkpoint(source, target, method, float(sparsity), calibration, criterion=criterion, progress=progress)
details["wall_s"] = time.perf_counter() - start
details["peak_rss_bytes"] = peak_rss_bytes()
print(json.dumps(details))
"""
EXPORT = """
import json, sys, time
from edgeprune.backends.onnx_tools.decoder import write_decoder
from edgeprune.llm.decoder import CheckpointDecoder
from edgeprune.llm.onnx_backend import weight_only_for
from edgeprune.device.decode_loop import peak_rss_bytes
from edgeprune.profile import load_profile
source, target = sys.argv[1:3]
start = time.perf_counter()
files = write_decoder(CheckpointDecoder(source, 2048), __import__("pathlib").Path(target), "int4",
                      weight_only_for(load_profile("host"), "int4"))
print(json.dumps({"wall_s": time.perf_counter() - start, "peak_rss_bytes": peak_rss_bytes(),
                  "bytes": files.data.stat().st_size + files.model.stat().st_size}))
"""


def calibration_ids(folder: Path, path: Path) -> Path:
    """Returns a file of 2,048 calibration tokens (8 windows of 256) of pydoc_data.topics through the tokenizer."""
    import torch
    from transformers import AutoTokenizer

    from edgeprune.llm.text import pydoc_corpus

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    ids = tokenizer(pydoc_corpus()[0], add_special_tokens=False)["input_ids"][: CALIBRATION_TOKENS]
    torch.save([torch.tensor(ids[i:i + SEQ]).unsqueeze(0) for i in range(0, CALIBRATION_TOKENS, SEQ)], path)
    return path


def run(script: str, *args: str) -> dict:
    """Returns the JSON a script prints last, run in a process of its own (its peak RSS its own)."""
    done = subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    sys.stderr.write(done.stderr[-600:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def shapes_match(folder: Path) -> bool:
    """Returns whether every tensor of the pruned checkpoint has the shape the model its config builds expects
    (the model built on the meta device: nothing is loaded), and every parameter has a tensor."""
    import torch
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(folder))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    expected = {n: tuple(p.shape) for n, p in model.named_parameters()}
    index = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
    stored = {}
    for name, file in index.items():
        with safe_open(str(folder / file), framework="pt") as f:
            stored[name] = tuple(f.get_slice(name).get_shape())
    return stored == expected


def truncated_match(source: Path, work: Path, ids: Path, method: str, sparsity: float, criterion: str) -> float:
    """Returns the largest relative logit difference between the streamed and the in-memory prune of the
    checkpoint truncated to 2 blocks, on 8 tokens."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig

    from edgeprune.llm import load_causal_lm, prune_causal_lm
    from edgeprune.llm.checkpoint import Checkpoint, copy_side_files
    from edgeprune.llm.stream import prune_checkpoint

    two = work / "two-blocks"
    if not (two / "model.safetensors").is_file():
        two.mkdir(parents=True, exist_ok=True)
        config = AutoConfig.from_pretrained(str(source))
        config.num_hidden_layers = 2
        config.save_pretrained(str(two))
        copy_side_files(source, two)
        checkpoint = Checkpoint(source)
        names = [n for n in checkpoint.names if not n.startswith("model.layers.") or n.split(".")[2] in ("0", "1")]
        save_file(checkpoint.tensors(names), str(two / "model.safetensors"), metadata={"format": "pt"})
    calibration = torch.load(ids)
    streamed_dir = work / f"two-{method}"
    prune_checkpoint(two, streamed_dir, method, sparsity, calibration, criterion=criterion)
    in_memory = prune_causal_lm(load_causal_lm(two), method, sparsity, calibration, criterion=criterion).model
    streamed = load_causal_lm(streamed_dir)
    tokens = calibration[0][:, :8]
    with torch.no_grad():
        want, got = in_memory(input_ids=tokens).logits, streamed(input_ids=tokens).logits
    return float((want - got).abs().max() / want.abs().max())


def disk_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-7b", action="store_true")
    parser.add_argument("--runs", nargs="*", default=[label for label, *_ in RUNS], help="which prunes to run")
    parser.add_argument("--json", type=Path, default=ROOT / "out" / "llm_big.json")
    args = parser.parse_args()
    models = {"TinyLlama-1.1B": tinyllama_checkpoint(CACHE)}
    if not args.skip_7b:
        started = time.perf_counter()
        models["LLaMA-2-7B"] = tinyllama_checkpoint(CACHE, **LLAMA2_7B)
        print(f"7B checkpoint ready ({time.perf_counter() - started:.0f} s)", flush=True)
    results = {}
    work = Path(tempfile.mkdtemp(prefix="llm-big-", dir=CACHE))
    for name, folder in models.items():
        ids = calibration_ids(folder, work / f"{name}-ids.pt")
        rows = {}
        for label, method, sparsity, criterion in (r for r in RUNS if r[0] in args.runs):
            target = work / f"{name}-{method}"
            print(f"{name} {label} ...", flush=True)
            figures = run(PRUNE, folder, target, method, sparsity, criterion, ids)
            figures["disk_bytes"] = disk_bytes(target)
            figures["reloads"] = shapes_match(target)
            figures["truncated_rel_diff"] = truncated_match(folder, work / name, ids, method, sparsity, criterion)
            if method == "structured":
                figures["export"] = run(EXPORT, target, work / f"{name}-decoder")
            rows[label] = figures
            print(json.dumps({k: v for k, v in figures.items() if k != "block_seconds"}), flush=True)
        results[name] = {"source_bytes": disk_bytes(folder), "runs": rows}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
