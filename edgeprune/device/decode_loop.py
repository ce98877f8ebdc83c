"""The generation loop a decoder is timed with: the prompt in one pass, then one token at a time from the KV cache.

It reads the decoder folder ONNX Runtime GenAI reads (``genai_config.json`` beside
``model.onnx``) and runs it with ONNX Runtime alone, as GenAI does on the CPU: the key/value
buffers are allocated once at the context length and shared between each layer's past input
and present output (GroupQueryAttention writes the new token in place), so a step costs the
model's reads, not a copy of the cache. It imports only numpy and onnxruntime: a build runs
it in a process of its own, so the peak resident memory it reports is the runtime's with the
model at that context, and a device agent runs the same loop.

    python -m edgeprune.device.decode_loop FOLDER --prompt 512 --gen 128 --threads 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class DecoderConfig:
    """What the loop needs from genai_config.json: layers, KV heads, head size, vocabulary, context."""

    layers: int
    kv_heads: int
    head_size: int
    vocab: int
    context: int
    filename: str = "model.onnx"

    @classmethod
    def read(cls, folder: Path) -> DecoderConfig:
        model = json.loads((folder / "genai_config.json").read_text())["model"]
        decoder = model["decoder"]
        return cls(int(decoder["num_hidden_layers"]), int(decoder["num_key_value_heads"]), int(decoder["head_size"]),
                   int(model["vocab_size"]), int(model["context_length"]), decoder.get("filename", "model.onnx"))


class Decoder:
    """A decoder session with its KV cache: ``prefill`` a prompt, then ``step`` one token at a time."""

    def __init__(self, folder: Path, threads: int | None = None, context: int | None = None) -> None:
        import onnxruntime as ort

        self.config = DecoderConfig.read(folder)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(folder / self.config.filename), options,
                                            providers=["CPUExecutionProvider"])
        self.ort = ort
        self.context = min(context or self.config.context, self.config.context)
        c = self.config
        self.dtype = np.float16 if "float16" in self.session.get_inputs()[2].type else np.float32
        shape = (1, c.kv_heads, self.context, c.head_size)
        self.cache = [ort.OrtValue.ortvalue_from_numpy(np.zeros(shape, self.dtype)) for _ in range(2 * c.layers)]
        self.length = 0

    def _run(self, ids: np.ndarray) -> np.ndarray:
        """Returns the logits of the last position after running ``ids`` on top of the cache."""
        c = self.config
        total = self.length + ids.shape[1]
        if total > self.context:
            raise ValueError(f"context of {total} tokens exceeds the decoder's {self.context}")
        binding = self.session.io_binding()
        binding.bind_cpu_input("input_ids", ids.astype(np.int64))
        binding.bind_cpu_input("attention_mask", np.ones((1, total), dtype=np.int64))
        binding.bind_output("logits")  # first: get_outputs() returns the outputs in the order bound
        for i in range(c.layers):
            for j, kind in enumerate(("key", "value")):
                value = self.cache[2 * i + j]
                binding.bind_ortvalue_input(f"past_key_values.{i}.{kind}", value)
                binding.bind_ortvalue_output(f"present.{i}.{kind}", value)
        self.session.run_with_iobinding(binding)
        self.length = total
        return binding.get_outputs()[0].numpy()[0, -1]

    def prefill(self, ids: np.ndarray) -> np.ndarray:
        """Returns the last position's logits of a prompt (1, P), the cache emptied first."""
        self.length = 0
        return self._run(ids)

    def step(self, token: int) -> np.ndarray:
        """Returns the next logits after appending one token."""
        return self._run(np.array([[token]], dtype=np.int64))

    def greedy(self, prompt: np.ndarray, count: int) -> list[int]:
        """Returns ``count`` tokens generated greedily after ``prompt`` (1, P)."""
        tokens = [int(np.argmax(self.prefill(prompt)))]
        while len(tokens) < count:
            tokens.append(int(np.argmax(self.step(tokens[-1]))))
        return tokens


@dataclass
class Run:
    """One timed generation: the prompt's pass, the first token, every decode step."""

    prefill_s: float
    ttft_s: float
    decode_s: list[float] = field(default_factory=list)


def time_generation(decoder: Decoder, prompt: int, gen: int, repeats: int = 3, seed: int = 0) -> list[Run]:
    """Returns ``repeats`` timed runs: a ``prompt``-token prompt in one pass, then ``gen`` decode steps.

    Prompts are random token ids (fixed by ``seed``): the time of a pass does not depend on
    which tokens it reads. One short untimed run warms the session up first, as llama-bench does.
    """
    rng = np.random.default_rng(seed)
    warm = rng.integers(0, decoder.config.vocab, (1, min(prompt, 16)))
    decoder.greedy(warm, 4)
    runs = []
    for _ in range(repeats):
        ids = rng.integers(0, decoder.config.vocab, (1, prompt))
        start = time.perf_counter()
        logits = decoder.prefill(ids)
        prefilled = time.perf_counter()
        token = int(np.argmax(logits))
        run = Run(prefilled - start, time.perf_counter() - start)
        for _ in range(gen):
            began = time.perf_counter()
            token = int(np.argmax(decoder.step(token)))
            run.decode_s.append(time.perf_counter() - began)
        runs.append(run)
    return runs


def peak_rss_bytes() -> int:
    """Returns this process's peak resident memory in bytes (VmHWM on Linux, ru_maxrss elsewhere)."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def summary(runs: list[Run], prompt: int, gen: int) -> dict:
    """Returns the figures of the runs: medians of pp/tg tokens per second, TTFT, per-token decode latency."""
    pp = [prompt / r.prefill_s for r in runs]
    tg = [gen / sum(r.decode_s) for r in runs]
    steps = sorted(s for r in runs for s in r.decode_s)
    p90 = steps[min(len(steps) - 1, int(round(0.9 * (len(steps) - 1))))]
    return {
        "prompt_tokens": prompt, "generated_tokens": gen, "repeats": len(runs),
        "prefill_tokens_per_s": statistics.median(pp), "decode_tokens_per_s": statistics.median(tg),
        "ttft_ms": statistics.median(r.ttft_s for r in runs) * 1e3,
        "decode_ms_median": statistics.median(steps) * 1e3, "decode_ms_p90": p90 * 1e3,
        "spread": (max(tg) - min(tg)) / statistics.median(tg) if len(tg) > 1 else 0.0,
        "runs": [{"prefill_tokens_per_s": a, "decode_tokens_per_s": b} for a, b in zip(pp, tg, strict=True)],
    }


def run_process(folder: Path, prompt: int, gen: int, threads: int | None, repeats: int = 1) -> dict:
    """Returns the figures of this loop run on a decoder folder in a process of its own (its peak RSS its own)."""
    command = [sys.executable, "-m", "edgeprune.device.decode_loop", str(folder), "--prompt", str(prompt),
               "--gen", str(gen), "--repeats", str(repeats)]
    if threads:
        command += ["--threads", str(threads)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise RuntimeError(f"timing the decoder in {folder} failed: {last[:300]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def merge(runs: list[dict]) -> dict:
    """Returns one figure set from several processes: medians, the largest peak memory, the spread of decode speed."""
    out = dict(runs[0])
    for key in ("prefill_tokens_per_s", "decode_tokens_per_s", "ttft_ms", "decode_ms_median", "decode_ms_p90",
                "load_s"):
        out[key] = statistics.median(r[key] for r in runs)
    out["peak_rss_bytes"] = max(r["peak_rss_bytes"] for r in runs)
    tg = [r["decode_tokens_per_s"] for r in runs]
    out["spread"] = (max(tg) - min(tg)) / statistics.median(tg) if len(tg) > 1 else runs[0].get("spread", 0.0)
    out["repeats"] = len(runs)
    out.pop("runs", None)
    return out


def side_by_side(folders: dict[str, Path], prompt: int, gen: int, threads: int | None, rounds: int) -> dict[str, dict]:
    """Returns each decoder's merged figures from ``rounds`` rounds, each round one process of every decoder in
    turn, so load on the machine hits them alike."""
    runs: dict[str, list[dict]] = {role: [] for role in folders}
    for _ in range(rounds):
        for role, folder in folders.items():
            runs[role].append(run_process(folder, prompt, gen, threads))
    return {role: merge(r) for role, r in runs.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--prompt", type=int, default=512)
    parser.add_argument("--gen", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    decoder = Decoder(args.folder, args.threads, args.prompt + args.gen)
    load_s = time.perf_counter() - start
    runs = time_generation(decoder, args.prompt, args.gen, args.repeats)
    import onnxruntime

    out = {**summary(runs, args.prompt, args.gen), "load_s": load_s, "threads": args.threads,
           "peak_rss_bytes": peak_rss_bytes(), "runtime": f"onnxruntime {onnxruntime.__version__}",
           "decoder": asdict(decoder.config)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
