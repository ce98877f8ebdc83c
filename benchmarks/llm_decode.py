"""LLM decoding side by side: edgeprune's int4 decoders against llama.cpp Q4_0 and ONNX Runtime GenAI's int4.

A TinyLlama-1.1B-shaped checkpoint (its published config, random fp16 weights; made once by
benchmarks/llm_checkpoint.py and reused) is shipped four ways: llama.cpp's converter and
Q4_0 quantizer (through llama-cpp-python), ONNX Runtime GenAI's own model builder (int4),
edgeprune's int4 decoder of the dense model, and of the model with 30% of every width pruned
(magnitude, no restoration: random weights have no quality to keep, only shapes to time).
All four are timed on the same threads in one run, in interleaved rounds, each timing a
process of its own: pp512 (the prompt in one pass), tg128 (128 tokens decoded after it), time
to first token, file size and the process's peak resident memory. edgeprune's estimates of
its two decoders come from a profile probed on this machine in the same run (`edgeprune
profiles probe`, which calibrates on a decoder of its own, not this one), and of published
devices from their built-in profiles. Quality: perplexity of the shipped tiny LMs through
their fp32, int8 and int4 decoders with their caches (per language for the multilingual one).

Needs the benchmark environment: `make bench-llm-env` (compiles llama.cpp, about 20 minutes).

    .venv-llm/bin/python benchmarks/llm_decode.py [--rounds 3] [--threads 2] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from llm_runtimes import (  # noqa: E402
    CACHE,
    genai_export,
    llama_cpp_gguf,
    time_genai,
    time_llama_cpp,
    tinyllama_checkpoint,
)

ROOT = Path(__file__).resolve().parents[1]
WIDTH_PRUNED = 0.3


def edgeprune_decoders(hf_dir: Path) -> dict[str, Path]:
    """Returns edgeprune's int4 decoder folders of the checkpoint, dense and 30% width-pruned (made once)."""
    from transformers import AutoTokenizer

    from edgeprune.backends.onnx_tools.decoder import write_decoder
    from edgeprune.backends.onnx_tools.genai import write_genai_config, write_tokenizer
    from edgeprune.llm import load_causal_lm, prune_causal_lm
    from edgeprune.llm.decoder import CausalLMDecoder
    from edgeprune.llm.onnx_backend import weight_only_for
    from edgeprune.profile import load_profile

    out = {}
    for name, sparsity in (("edgeprune int4", 0.0), (f"edgeprune int4, width -{WIDTH_PRUNED:.0%}", WIDTH_PRUNED)):
        folder = CACHE / "edgeprune" / f"{hf_dir.name}-int4-width{int(sparsity * 100)}"
        out[name] = folder
        if (folder / "genai_config.json").is_file():
            continue
        partial = folder.with_suffix(".partial")
        partial.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        lm = load_causal_lm(hf_dir)
        if sparsity:
            lm = prune_causal_lm(lm, "structured", sparsity, None, criterion="magnitude", restore=False,
                                 multiple=16, inplace=True).model
        source = CausalLMDecoder(lm, 2048)
        write_decoder(source, partial, "int4", weight_only_for(load_profile("host"), "int4"))
        write_genai_config(partial, source.shape)
        write_tokenizer(partial, AutoTokenizer.from_pretrained(str(hf_dir)))
        partial.rename(folder)
        print(f"{name}: written in {time.perf_counter() - start:.0f} s", flush=True)
        del lm, source
    return out


def time_edgeprune(folder: Path, prompt: int, gen: int, threads: int) -> dict:
    """Returns edgeprune's own generation loop's figures for a decoder, timed in a fresh process."""
    done = subprocess.run([sys.executable, "-m", "edgeprune.device.decode_loop", str(folder), "--prompt", str(prompt),
                           "--gen", str(gen), "--threads", str(threads), "--repeats", "1"],
                          capture_output=True, text=True, check=True)
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    size = sum(f.stat().st_size for f in folder.iterdir() if f.name.startswith("model.onnx"))
    return {"pp_tokens_per_s": figures["prefill_tokens_per_s"], "tg_tokens_per_s": figures["decode_tokens_per_s"],
            "ttft_s": figures["ttft_ms"] / 1e3, "peak_rss_bytes": figures["peak_rss_bytes"], "size_bytes": size,
            "load_s": figures["load_s"], "decoder": figures["decoder"]}


def estimates(decoders: dict[str, Path], probed: Path, prompt: int, gen: int) -> dict:
    """Returns edgeprune's estimates of its decoders on the probed profile of this machine."""
    from edgeprune.measure.generation_estimate import estimate_generation
    from edgeprune.profile import load_profile_file

    profile = load_profile_file(probed)
    out = {}
    for name, folder in decoders.items():
        out[name] = estimate_generation(facts_of(folder), profile, prompt, gen).to_dict()
    return out


def facts_of(folder: Path):
    """Returns the estimator's facts of a decoder folder edgeprune wrote, read from its graph and config."""
    import onnx

    from edgeprune.measure.generation_estimate import DecoderFacts

    config = json.loads((folder / "genai_config.json").read_text())["model"]
    d = config["decoder"]
    graph = onnx.load(str(folder / "model.onnx"), load_external_data=False).graph
    sizes = {t.name: int(next(e.value for e in t.external_data if e.key == "length")) for t in graph.initializer
             if t.external_data}
    embedding = sum(v for k, v in sizes.items() if k.startswith("model.embed_tokens"))
    reads = sum(v for k, v in sizes.items() if k not in ("cos_cache", "sin_cache")) - embedding
    params = 0
    for node in graph.node:
        if node.op_type == "MatMulNBits":
            attrs = {a.name: a.i for a in node.attribute}
            params += attrs["K"] * attrs["N"]
    return DecoderFacts(d["num_hidden_layers"], d["hidden_size"], d["num_attention_heads"], d["num_key_value_heads"],
                        d["head_size"], config["vocab_size"], params, reads, 4, "fp32", "int4")


def published() -> list[dict]:
    """Returns edgeprune's estimates beside published device figures (int4 weights, batch 1), each cited."""
    from edgeprune.measure.generation_estimate import DecoderFacts, estimate_generation
    from edgeprune.profile import load_profile

    def llama(layers, hidden, heads, kv, ffn, vocab) -> DecoderFacts:
        head = hidden // heads
        params = layers * (hidden * (heads + 2 * kv) * head + hidden * hidden + 3 * hidden * ffn) + vocab * hidden
        return DecoderFacts(layers, hidden, heads, kv, head, vocab, params, int(params * 4.5 / 8), 2, "fp16", "int4")

    tiny, llama7b = llama(22, 2048, 32, 4, 5632, 32000), llama(32, 4096, 32, 32, 11008, 32000)
    rows = [
        ("TinyLlama-1.1B int4", "jetson-orin-nano", tiny, 128, 128, {"decode": 68.0},
         "about 68 tokens/s charted for TinyLlama on Orin Nano (NVIDIA Jetson AI Lab benchmarks)"),
        ("Llama-2-7B int4", "jetson-agx-orin", llama7b, 128, 128, {"decode": 45.0, "prefill": 583.0},
         "MLC on AGX Orin: prefill 583, decode 43-47 tokens/s (NVIDIA Jetson AI Lab benchmarks)"),
    ]
    out = []
    for model, profile, facts, prompt, gen, seen, source in rows:
        est = estimate_generation(facts, load_profile(profile), prompt, gen)
        out.append({"model": model, "profile": profile, "estimate": est.to_dict(), "published": seen,
                    "error": {k: round((est.decode_tokens_per_s if k == "decode" else est.prefill_tokens_per_s) / v - 1, 3)
                              for k, v in seen.items()},
                    "source": source})
    return out


def quality() -> dict:
    """Returns perplexity of the shipped tiny LMs through their fp32, int8 and int4 decoders (with their caches)."""
    from edgeprune.backends.onnx_tools.decoder import write_decoder
    from edgeprune.llm import load_causal_lm
    from edgeprune.llm.decoder import CausalLMDecoder
    from edgeprune.llm.onnx_backend import decoder_predictor, weight_only_for
    from edgeprune.profile import load_profile

    sys.path.insert(0, str(ROOT / "examples"))
    import multilingual_lm
    import tiny_lm

    out = {}
    for name, module in (("tiny_lm", tiny_lm), ("multilingual_lm", multilingual_lm)):
        workload = module.workload()
        lm = load_causal_lm(workload.text.checkpoint)
        row = {"pytorch fp32": workload.evaluate(lambda ids, m=workload.model: m(ids))}
        for precision in ("fp32", "int8", "int4"):
            with tempfile.TemporaryDirectory() as tmp:
                files = write_decoder(CausalLMDecoder(lm, 512), Path(tmp), precision,
                                      weight_only_for(load_profile("host"), precision))
                row[precision] = workload.evaluate(decoder_predictor(files.model))
        out[name] = row
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt", type=int, default=512)
    parser.add_argument("--gen", type=int, default=128)
    parser.add_argument("--json", type=Path, default=ROOT / "out" / "llm_decode.json")
    parser.add_argument("--skip-quality", action="store_true")
    args = parser.parse_args()
    hf_dir = tinyllama_checkpoint(CACHE)
    artifacts = {"llama.cpp Q4_0": llama_cpp_gguf(hf_dir, CACHE / "gguf"),
                 "ONNX Runtime GenAI int4": genai_export(hf_dir, CACHE / "genai" / f"{hf_dir.name}-int4")}
    decoders = edgeprune_decoders(hf_dir)
    artifacts.update(decoders)
    probed = Path(tempfile.mkdtemp()) / "probed.toml"
    subprocess.run([sys.executable, "-m", "edgeprune.cli", "profiles", "probe", "-o", str(probed), "--name", "probed"],
                   check=True, capture_output=True)
    runs: dict[str, list[dict]] = {name: [] for name in artifacts}
    for round_ in range(args.rounds):
        for name, path in artifacts.items():  # interleaved: a burst of load hits every runtime alike
            if name.startswith("llama.cpp"):
                figures = time_llama_cpp(path, args.prompt, args.gen, args.threads, repeats=1)
            elif name.startswith("ONNX Runtime GenAI"):
                figures = time_genai(path, args.prompt, args.gen, args.threads, repeats=1)
            else:
                figures = time_edgeprune(path, args.prompt, args.gen, args.threads)
            runs[name].append(figures)
            print(f"round {round_ + 1} {name}: pp{args.prompt} {figures['pp_tokens_per_s']:.1f}, "
                  f"tg{args.gen} {figures['tg_tokens_per_s']:.2f} tokens/s", flush=True)
    table = {}
    for name, rs in runs.items():
        table[name] = {key: statistics.median(r[key] for r in rs)
                       for key in ("pp_tokens_per_s", "tg_tokens_per_s", "ttft_s", "peak_rss_bytes", "load_s")}
        table[name]["size_bytes"] = rs[0]["size_bytes"]
        table[name]["tg_runs"] = [round(r["tg_tokens_per_s"], 2) for r in rs]
    est = estimates(decoders, probed, args.prompt, args.gen)
    results = {"machine": machine(), "threads": args.threads, "prompt": args.prompt, "gen": args.gen,
               "rounds": args.rounds, "table": table, "estimates": est, "published": published(),
               "probed_profile": probed.read_text()}
    if not args.skip_quality:
        results["quality"] = quality()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))
    print(markdown(results))


def machine() -> str:
    from edgeprune.host import this_host

    return this_host().description


def markdown(r: dict) -> str:
    """Returns the tables for docs/benchmarks.md."""
    p, g = r["prompt"], r["gen"]
    base = r["table"]["llama.cpp Q4_0"]["tg_tokens_per_s"]
    lines = [f"| runtime | file MB | pp{p} tokens/s | tg{g} tokens/s | tg vs llama.cpp | TTFT s | peak RSS MB | "
             f"tg{g} of each round |", "|---|---|---|---|---|---|---|---|"]
    for name, t in r["table"].items():
        lines.append(f"| {name} | {t['size_bytes'] / 1e6:.0f} | {t['pp_tokens_per_s']:.1f} | {t['tg_tokens_per_s']:.2f} | "
                     f"{t['tg_tokens_per_s'] / base:.2f}x | {t['ttft_s']:.2f} | {t['peak_rss_bytes'] / 1e6:.0f} | "
                     f"{', '.join(map(str, t['tg_runs']))} |")
    lines += ["", f"| edgeprune decoder | estimated pp{p} | measured | error | estimated tg{g} | measured | error |",
              "|---|---|---|---|---|---|---|"]
    for name, e in r["estimates"].items():
        t = r["table"][name]
        lines.append(f"| {name} | {e['prefill_tokens_per_s']:.1f} | {t['pp_tokens_per_s']:.1f} | "
                     f"{e['prefill_tokens_per_s'] / t['pp_tokens_per_s'] - 1:+.0%} | {e['decode_tokens_per_s']:.2f} | "
                     f"{t['tg_tokens_per_s']:.2f} | {e['decode_tokens_per_s'] / t['tg_tokens_per_s'] - 1:+.0%} |")
    lines += ["", "| model | profile | estimated decode / prefill tokens/s | published | error | source |",
              "|---|---|---|---|---|---|"]
    for row in r["published"]:
        e = row["estimate"]
        seen = ", ".join(f"{k} {v:g}" for k, v in row["published"].items())
        errors = ", ".join(f"{k} {v:+.0%}" for k, v in row["error"].items())
        lines.append(f"| {row['model']} | {row['profile']} | {e['decode_tokens_per_s']:.1f} / "
                     f"{e['prefill_tokens_per_s']:.0f} | {seen} | {errors} | {row['source']} |")
    if "quality" in r:
        lines += ["", "| model | slice | PyTorch fp32 | decoder fp32 | int8 | int4 | int4 vs fp32 |",
                  "|---|---|---|---|---|---|---|"]
        for model, row in r["quality"].items():
            slices = row["pytorch fp32"] if isinstance(row["pytorch fp32"], dict) else {"overall": row["pytorch fp32"]}
            for key in slices:
                v = {k: (x[key] if isinstance(x, dict) else x) for k, x in row.items()}
                lines.append(f"| {model} | {key} | {v['pytorch fp32']:.3f} | {v['fp32']:.3f} | {v['int8']:.3f} | "
                             f"{v['int4']:.3f} | {v['int4'] / v['fp32'] - 1:+.2%} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
