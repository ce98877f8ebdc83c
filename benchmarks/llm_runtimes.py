"""The reference runtimes of the LLM decoding comparison: llama.cpp Q4_0 and ONNX Runtime GenAI int4.

Each runtime gets its own artifact, made by its own tools (llama.cpp's converter and quantizer,
GenAI's model builder), and is timed the way llama-bench times llama.cpp: ``pp``, the prompt
processed in one batch, and ``tg``, tokens decoded one at a time after it. Every timing runs in
a fresh process so that its peak resident memory is its own. Needs the .venv-llm environment
(``make bench-llm-env``).

    python benchmarks/llm_runtimes.py smoke --prompt 64 --gen 16 --repeats 1
    python benchmarks/llm_runtimes.py time-llama-cpp MODEL.gguf --prompt 512 --gen 128
    python benchmarks/llm_runtimes.py time-genai GENAI_FOLDER --prompt 512 --gen 128
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.metadata
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from llm_checkpoint import tinyllama_checkpoint  # noqa: E402

__all__ = ["genai_export", "llama_cpp_gguf", "time_genai", "time_llama_cpp", "tinyllama_checkpoint"]

CACHE = Path.home() / ".cache" / "edgeprune-bench"
QUANT_TYPES = ("Q4_0", "Q4_K_M")


def llama_cpp_converter(cache: Path) -> Path:
    """Returns the path of llama.cpp's convert_hf_to_gguf.py, taken from llama-cpp-python's sdist.

    The converter, its ``conversion`` package and ``gguf-py`` come from the sdist of the
    llama-cpp-python that is installed, so they match the library that loads their output.
    """
    version = importlib.metadata.version("llama_cpp_python")
    folder = cache / f"llama-cpp-python-{version}"
    script = folder / "convert_hf_to_gguf.py"
    if script.is_file():
        return script
    wanted = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")
    with tempfile.TemporaryDirectory(dir=cache) as download:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary",
                        ":all:", f"llama-cpp-python=={version}", "-d", download], check=True)
        (sdist,) = Path(download).glob("*.tar.gz")
        partial = Path(download) / "extracted"
        with tarfile.open(sdist) as tar:
            members = []
            for member in tar.getmembers():
                inside = member.name.split("/", 1)[-1]
                if inside.startswith("vendor/llama.cpp/"):
                    member.name = inside.removeprefix("vendor/llama.cpp/")
                    if member.name.startswith(wanted) and (member.isfile() or member.isdir()):
                        members.append(member)
            tar.extractall(partial, members=members, **_tar_filter())
        if not (partial / "convert_hf_to_gguf.py").is_file():
            raise RuntimeError(f"{sdist.name} holds no vendor/llama.cpp/convert_hf_to_gguf.py")
        shutil.rmtree(folder, ignore_errors=True)
        partial.rename(folder)
    return script


def _tar_filter() -> dict[str, Any]:
    """Returns tarfile's safe extraction filter where this Python has one (3.10.12+, 3.11.4+)."""
    return {"filter": "data"} if hasattr(tarfile, "data_filter") else {}


def llama_cpp_gguf(hf_dir: Path, work: Path, quant: str = "Q4_0") -> Path:
    """Returns the path of ``hf_dir`` as a llama.cpp GGUF quantized to ``quant``, made once.

    The checkpoint goes to an f16 GGUF through llama.cpp's own converter, then to ``quant``
    (Q4_0 or Q4_K_M) through ``llama_model_quantize``, as ``llama-quantize`` does.
    """
    import llama_cpp

    if quant not in QUANT_TYPES:
        raise ValueError(f"quant must be one of {QUANT_TYPES}, not {quant!r}")
    hf_dir, work = Path(hf_dir), Path(work)
    work.mkdir(parents=True, exist_ok=True)
    out = work / f"{hf_dir.name}.{quant}.gguf"
    if out.is_file():
        return out
    f16 = work / f"{hf_dir.name}.f16.gguf"
    if not f16.is_file():
        script = llama_cpp_converter(work)
        env = {**os.environ, "PYTHONPATH": str(script.parent / "gguf-py")}
        partial = f16.with_name(f16.name + ".partial")
        subprocess.run([sys.executable, str(script), str(hf_dir), "--outfile", str(partial),
                        "--outtype", "f16"], check=True, env=env)
        partial.rename(f16)
    llama_cpp.llama_backend_init()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{quant}")
    partial = out.with_name(out.name + ".partial")
    status = llama_cpp.llama_model_quantize(
        str(f16).encode(), str(partial).encode(), ctypes.byref(params))
    if status != 0:
        raise RuntimeError(f"llama_model_quantize({f16.name}, {quant}) returned {status}")
    partial.rename(out)
    return out


def genai_export(hf_dir: Path, out: Path, precision: str = "int4") -> Path:
    """Returns ``out``, the ONNX Runtime GenAI export of ``hf_dir`` made by GenAI's own builder.

    The builder's defaults for the CPU are kept, as its users would get them: int4 RTN,
    block size 32, symmetric, accuracy_level 4 (int8 activations in MatMulNBits), Q/K/V fused,
    lm_head int4 and the embedding table left in fp32 (262 MB of TinyLlama's 910 MB).
    """
    hf_dir, out = Path(hf_dir), Path(out)
    if (out / "genai_config.json").is_file():
        return out
    partial = out.with_name(out.name + ".partial")
    cache = out.with_name(out.name + ".builder-cache")
    shutil.rmtree(partial, ignore_errors=True)
    # The builder's --help crashes in onnxruntime-genai 0.18; its flags are in models/builder.py.
    subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf_dir),
                    "-o", str(partial), "-p", precision, "-e", "cpu", "-c", str(cache)], check=True)
    shutil.rmtree(cache, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)
    return out


def time_llama_cpp(gguf: Path, prompt: int = 512, gen: int = 128, threads: int = 2,
                   repeats: int = 3) -> dict[str, Any]:
    """Returns llama.cpp's pp and tg tokens/s, time to first token, load time, size and peak RSS.

    Medians over ``repeats`` runs, every run listed; measured in a fresh process.
    """
    return _in_fresh_process("time-llama-cpp", gguf, prompt, gen, threads, repeats)


def time_genai(folder: Path, prompt: int = 512, gen: int = 128, threads: int = 2,
               repeats: int = 3) -> dict[str, Any]:
    """Returns ONNX Runtime GenAI's pp and tg tokens/s, TTFT, load time, size and peak RSS.

    The same figures as :func:`time_llama_cpp`, for a :func:`genai_export` folder.
    """
    return _in_fresh_process("time-genai", folder, prompt, gen, threads, repeats)


def _in_fresh_process(command: str, artifact: Path, prompt: int, gen: int, threads: int,
                      repeats: int) -> dict[str, Any]:
    """Returns the JSON that this script's ``command`` prints when run in a new interpreter."""
    args = [sys.executable, str(Path(__file__).resolve()), command, str(artifact),
            "--prompt", str(prompt), "--gen", str(gen), "--threads", str(threads),
            "--repeats", str(repeats)]
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{command} {artifact} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def random_prompt(n_vocab: int, length: int) -> list[int]:
    """Returns ``length`` token ids drawn uniformly from the vocabulary with a fixed seed."""
    rng = random.Random(0)
    return [rng.randrange(n_vocab) for _ in range(length)]


def peak_rss_bytes() -> int:
    """Returns this process's peak resident set size in bytes (VmHWM, else getrusage)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def summarize(runs: list[dict[str, float]], prompt: int, gen: int) -> dict[str, Any]:
    """Returns the medians of pp and tg tokens/s and TTFT over ``runs``, with the runs listed."""
    for run in runs:
        run["pp_tokens_per_s"] = prompt / run["pp_s"]
        run["tg_tokens_per_s"] = gen / run["tg_s"]
    return {
        "pp_tokens_per_s": statistics.median(r["pp_tokens_per_s"] for r in runs),
        "tg_tokens_per_s": statistics.median(r["tg_tokens_per_s"] for r in runs),
        "ttft_s": statistics.median(r["ttft_s"] for r in runs),
        "runs": runs,
    }


def measure_llama_cpp(gguf: Path, prompt: int, gen: int, threads: int,
                      repeats: int) -> dict[str, Any]:
    """Returns :func:`time_llama_cpp`'s figures measured in this process."""
    import llama_cpp
    import numpy as np

    started = time.perf_counter()
    # flash_attn=True: llama-bench's default is "auto", which resolves to enabled on a CPU;
    # n_ubatch 512 as llama-bench's default; n_batch >= prompt so the prompt is one llama_decode.
    llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=prompt + gen + 1, n_batch=max(prompt, 512),
                          n_ubatch=512, n_threads=threads, n_threads_batch=threads,
                          flash_attn=True, seed=0, verbose=False)
    load_s = time.perf_counter() - started
    n_vocab = llm.n_vocab()
    tokens = random_prompt(n_vocab, prompt)

    def argmax() -> int:
        logits = llama_cpp.llama_get_logits_ith(llm.ctx, -1)  # waits for the decode to finish
        return int(np.ctypeslib.as_array(logits, shape=(n_vocab,)).argmax())

    def run(n_gen: int) -> dict[str, float]:
        llm.reset()  # eval() then drops the cached positions, as llama-bench clears its memory
        start = time.perf_counter()
        llm.eval(tokens)
        token = argmax()
        first = time.perf_counter()
        for _ in range(n_gen):
            llm.eval([token])
            token = argmax()
        end = time.perf_counter()
        return {"pp_s": first - start, "ttft_s": first - start, "tg_s": end - first}

    run(1)  # warm-up, as llama-bench does: pages the weights in and sizes the buffers
    runs = [run(gen) for _ in range(repeats)]
    return {
        "runtime": "llama.cpp",
        "artifact": str(gguf),
        "size_bytes": Path(gguf).stat().st_size,
        "prompt_tokens": prompt, "gen_tokens": gen, "threads": threads,
        "load_s": load_s,
        **summarize(runs, prompt, gen),
        "peak_rss_bytes": peak_rss_bytes(),
        "settings": {"n_batch": max(prompt, 512), "n_ubatch": 512, "flash_attn": True,
                     "use_mmap": True, "prompt": "uniform random token ids, seed 0",
                     "decode": "greedy (argmax of the last logits)"},
        "versions": {"llama-cpp-python": llama_cpp.__version__,
                     "llama.cpp": llama_cpp.llama_version().decode(),
                     "system_info": llama_cpp.llama_print_system_info().decode().strip()},
    }


def measure_genai(folder: Path, prompt: int, gen: int, threads: int,
                  repeats: int) -> dict[str, Any]:
    """Returns :func:`time_genai`'s figures measured in this process."""
    import onnxruntime
    import onnxruntime_genai as og

    folder = Path(folder)
    vocab = json.loads((folder / "genai_config.json").read_text())["model"]["vocab_size"]
    started = time.perf_counter()
    config = og.Config(str(folder))
    # Threads through the decoder's ONNX Runtime session options, overlaid on genai_config.json
    # (the file is left as the builder wrote it); intra-op threads count the calling thread,
    # as llama.cpp's n_threads does.
    config.overlay(json.dumps({"model": {"decoder": {"session_options": {
        "intra_op_num_threads": threads, "inter_op_num_threads": 1}}}}))
    model = og.Model(config)
    load_s = time.perf_counter() - started
    tokens = random_prompt(vocab, prompt)

    def run(n_gen: int) -> dict[str, float]:
        params = og.GeneratorParams(model)
        # +1: the first token comes from the prefill's logits, then n_gen decode steps follow;
        # min_length keeps an end-of-sequence token of the random model from stopping it early.
        length = prompt + n_gen + 1
        params.set_search_options(max_length=length, min_length=length, do_sample=False)
        generator = og.Generator(model, params)  # allocates the KV cache: not timed
        start = time.perf_counter()
        generator.append_tokens(tokens)  # the prefill
        generator.generate_next_token()  # picks the first token from the prefill's logits
        first = time.perf_counter()
        for _ in range(n_gen):
            generator.generate_next_token()  # runs the model on the last token, picks the next
        end = time.perf_counter()
        if generator.token_count() != length:
            raise RuntimeError(f"generated {generator.token_count() - prompt} tokens, "
                               f"not {n_gen + 1}")
        return {"pp_s": first - start, "ttft_s": first - start, "tg_s": end - first}

    run(1)
    runs = [run(gen) for _ in range(repeats)]
    return {
        "runtime": "onnxruntime-genai",
        "artifact": str(folder),
        "size_bytes": sum(f.stat().st_size for f in folder.iterdir() if f.is_file()),
        "onnx_bytes": sum(f.stat().st_size for f in folder.glob("*.onnx*")),
        "prompt_tokens": prompt, "gen_tokens": gen, "threads": threads,
        "load_s": load_s,
        **summarize(runs, prompt, gen),
        "peak_rss_bytes": peak_rss_bytes(),
        "settings": {"intra_op_num_threads": threads, "inter_op_num_threads": 1,
                     "prompt": "uniform random token ids, seed 0", "decode": "greedy"},
        "versions": {"onnxruntime-genai": og.__version__, "onnxruntime": onnxruntime.__version__},
    }


def smoke(prompt: int, gen: int, threads: int, repeats: int) -> dict[str, Any]:
    """Returns both runtimes' figures on the TinyLlama-shaped checkpoint, making what is missing."""
    hf_dir = tinyllama_checkpoint(CACHE)
    gguf = llama_cpp_gguf(hf_dir, CACHE / "gguf")
    genai = genai_export(hf_dir, CACHE / "genai" / f"{hf_dir.name}-int4")
    return {"llama.cpp Q4_0": time_llama_cpp(gguf, prompt, gen, threads, repeats),
            "onnxruntime-genai int4": time_genai(genai, prompt, gen, threads, repeats)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["time-llama-cpp", "time-genai", "smoke"])
    parser.add_argument("artifact", nargs="?", type=Path, help="a GGUF file or a GenAI folder")
    parser.add_argument("--prompt", type=int, default=512)
    parser.add_argument("--gen", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    figures = (args.prompt, args.gen, args.threads, args.repeats)
    if args.command == "smoke":
        result = smoke(*figures)
    elif args.artifact is None:
        parser.error(f"{args.command} needs an artifact")
    elif args.command == "time-llama-cpp":
        result = measure_llama_cpp(args.artifact, *figures)
    else:
        result = measure_genai(args.artifact, *figures)
    print(json.dumps(result, indent=2 if args.command == "smoke" else None))


if __name__ == "__main__":
    main()
