"""An LLM that ships: a decoder with a KV cache that ONNX Runtime GenAI generates from, gated on tokens per second."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

pytest.importorskip("transformers")

import onnxruntime_genai as og  # noqa: E402  (the llm extra's runtime, in the dev install: it must run here)
import torch  # noqa: E402

from edgeprune.backends.onnx_tools.decoder import write_decoder  # noqa: E402
from edgeprune.backends.onnx_tools.genai import write_genai_config, write_tokenizer  # noqa: E402
from edgeprune.device.decode_loop import Decoder  # noqa: E402
from edgeprune.llm import causal_lm_workload, load_causal_lm  # noqa: E402
from edgeprune.llm.decoder import CausalLMDecoder  # noqa: E402
from edgeprune.llm.generate_check import check_generation  # noqa: E402

from conftest import DIGITS, ROOT, run_cli, start_agent  # noqa: E402

TINY = ROOT / "examples" / "weights" / "tiny_lm"
PROMPT, GENERATE = 64, 32  # a short context keeps the timing quick; the defaults are 512 and 128


def _genai_tokens(folder: Path, prompt: list[int], count: int) -> list[int]:
    """Returns ``count`` tokens ONNX Runtime GenAI's own Generator generates greedily after ``prompt``."""
    model = og.Model(str(folder))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(prompt) + count, min_length=len(prompt) + count, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(prompt)
    out = []
    while not generator.is_done():
        generator.generate_next_token()
        out.append(int(generator.get_next_tokens()[0]))
    return out


@pytest.fixture(scope="module")
def int4_build(tmp_path_factory):
    """The tiny LM built int4 for this machine's profile with a tokens/s budget no CPU meets: (process, folder)."""
    out = tmp_path_factory.mktemp("llm") / "int4"
    proc = run_cli("build", f"hf:{TINY}", "--profile", "host", "--quantize", "int4", "--strategy", "none",
                   "--prompt-tokens", str(PROMPT), "--generate-tokens", str(GENERATE),
                   "--min-decode-tokens-per-s", "1e9", "-o", str(out), "--json")
    return proc, out


def test_fp32_decoder_generates_pytorchs_greedy_tokens_and_genai_runs_it(tmp_path):
    lm = load_causal_lm(TINY)
    workload = causal_lm_workload(TINY, samples=2, eval_samples=2)
    source = CausalLMDecoder(lm, 512)
    write_decoder(source, tmp_path, "fp32")
    write_genai_config(tmp_path, source.shape)
    write_tokenizer(tmp_path, workload.text.tokenizer)
    prompt = workload.calibration[0][0][:, :16]
    with torch.no_grad():
        theirs = lm.generate(prompt, max_new_tokens=32, min_new_tokens=32, do_sample=False)[0, 16:].tolist()
    # the head of 24 is padded to 32 for GroupQueryAttention's kernel: zeros that change no logit
    check = check_generation(tmp_path, workload.model, prompt, "fp32")
    assert check.passed and check.decode_steps == 32 and check.rel_diff < 1e-5, check
    assert Decoder(tmp_path, context=64).greedy(prompt.numpy(), 32) == theirs
    assert _genai_tokens(tmp_path, prompt[0].tolist(), 32) == theirs


def test_an_int4_build_ships_a_genai_decoder_and_gates_tokens_per_second(int4_build):
    proc, out = int4_build
    assert proc.returncode == 3, proc.stderr  # built, but the decode budget is missed
    report = json.loads(proc.stdout)
    assert report["schema"] == 2 and report["artifact"]["precision"] == "int4"
    folder = Path(report["artifact"]["path"])
    assert folder == out / "decoder" and {"model.onnx", "model.onnx.data", "genai_config.json",
                                           "tokenizer.json"} <= {p.name for p in folder.iterdir()}
    # the layout ONNX Runtime GenAI reads: past/present per layer, GroupQueryAttention, int4 blocks
    graph = onnx.load(str(folder / "model.onnx"), load_external_data=False).graph
    names = {i.name for i in graph.input} | {o.name for o in graph.output}
    assert {f"past_key_values.{i}.{k}" for i in range(4) for k in ("key", "value")} <= names
    assert {f"present.{i}.{k}" for i in range(4) for k in ("key", "value")} <= names
    ops = [n.op_type for n in graph.node]
    assert ops.count("GroupQueryAttention") == 4 and "MatMul" not in ops
    blocks = {(a.name, a.i) for n in graph.node if n.op_type == "MatMulNBits" for a in n.attribute
              if a.name in ("bits", "block_size")}
    assert blocks == {("bits", 4), ("block_size", 64)} and ops.count("MatMulNBits") == 4 * 5 + 1
    details = report["artifact"]["details"]["decoder"]
    assert details["weights"]["algorithm"] == "rtn" and "RTN" in details["quantization"]
    config = json.loads((folder / "genai_config.json").read_text())["model"]["decoder"]
    assert (config["num_key_value_heads"], config["head_size"], config["num_hidden_layers"]) == (5, 32, 4)
    assert len(_genai_tokens(folder, [5, 6, 7, 8], 12)) == 12
    # verified as a generator: a prompt and 32 cached steps against PyTorch's full forward
    generated = report["artifact"]["verified"]["generation"]
    assert report["artifact"]["verified"]["passed"] and generated["decode_steps"] == 32 and generated["passed"]
    # measured as it runs, on this machine (profile host is this machine)
    gen = report["generation"]
    assert gen["source"] == "measured" and (gen["prompt_tokens"], gen["generated_tokens"]) == (PROMPT, GENERATE)
    assert gen["prefill_tokens_per_s"] > 0 and gen["decode_tokens_per_s"] > 0 and gen["ttft_ms"] > 0
    assert gen["decode_ms_p90"] >= gen["decode_ms_median"] > 0 and gen["estimated_decode_tokens_per_s"] > 0
    memory = report["memory"]
    kv = 2 * 4 * 5 * 32 * (PROMPT + GENERATE) * 4 / 1e6
    assert memory["source"] == "measured" and memory["context_tokens"] == PROMPT + GENERATE
    assert memory["kv_cache_mb"] == pytest.approx(kv, abs=1e-3) and memory["peak_mb"] > memory["weights_mb"] + kv
    latency = report["latency"]
    assert latency["median_ms"] == gen["decode_ms_median"] and latency["baseline_median_ms"] > 0
    budget = {b["name"]: b for b in report["budgets"]}["decode_tokens_per_s"]
    assert budget["met"] is False and budget["value"] == gen["decode_tokens_per_s"] and budget["unit"] == "tokens/s"
    # int4 through the artifact with its cache: within 2% of the fp32 model's perplexity
    accuracy = report["accuracy"]
    assert accuracy["metric"] == "perplexity" and accuracy["pruned"] <= 1.02 * accuracy["baseline"]
    assert accuracy["pruned"] > accuracy["baseline"]  # 4-bit weights cost something
    assert "tg32" in (out / "report.md").read_text()


def test_check_regates_a_stored_llm_report(int4_build):
    _, out = int4_build
    assert run_cli("check", str(out), "--min-decode-tokens-per-s", "1").returncode == 0
    proc = run_cli("check", str(out), "--max-ttft-ms", "1e-6", "--json")
    assert proc.returncode == 3 and json.loads(proc.stdout)["budgets"][0]["name"] == "ttft_ms"
    assert run_cli("check", str(out)).returncode == 3  # the stored budget, missed
    # bench re-times the build's decoder generating, as the build did
    proc = run_cli("bench", str(out), "--prompt-tokens", "16", "--generate-tokens", "8", "--quick", "--json")
    timed = json.loads(proc.stdout)
    assert proc.returncode == 0 and timed["source"] == "measured" and timed["generated_tokens"] == 8
    assert timed["decode_tokens_per_s"] > 0 and timed["prefill_tokens_per_s"] > 0


def test_generation_budgets_on_a_model_that_does_not_generate_are_bad_input(tmp_path):
    proc = run_cli("build", str(DIGITS), "--profile", "host", "--min-decode-tokens-per-s", "10", "-o", str(tmp_path / "x"))
    assert proc.returncode == 2 and "need a causal LM" in proc.stderr and not (tmp_path / "x").exists()


def test_a_jetson_build_writes_a_gpu_decoder_and_estimates_its_generation(tmp_path):
    proc = run_cli("build", f"hf:{TINY}", "--profile", "jetson-orin-nano", "--quantize", "int4", "--strategy", "none",
                   "--prompt-tokens", str(PROMPT), "--generate-tokens", str(GENERATE), "-o", str(tmp_path / "j"),
                   "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    # a causal LM ships as an ONNX Runtime GenAI decoder, not a TensorRT engine, and says so
    assert report["artifact"]["format"] == "onnx" and any("KV cache" in r for r in report["strategy"]["reasons"])
    details = report["artifact"]["details"]["decoder"]
    assert details["compute"] == "fp16" and details["weights"]["block_size"] == 32
    config = json.loads((tmp_path / "j" / "decoder" / "genai_config.json").read_text())
    assert config["model"]["decoder"]["session_options"]["provider_options"] == [{"cuda": {}}]
    gen = report["generation"]
    assert gen["source"] == "estimated" and "not measured" in gen["note"]
    assert report["latency"]["source"] == "estimated" and report["memory"]["source"] == "estimated"


def test_the_estimate_follows_bandwidth_and_bytes_per_token():
    from edgeprune.measure.generation_estimate import DecoderFacts, estimate_generation
    from edgeprune.profile import load_profile

    def facts(weight_bytes: int) -> DecoderFacts:  # TinyLlama-1.1B's widths, int4 weights
        return DecoderFacts(22, 2048, 32, 4, 64, 32000, 1_034_000_000, weight_bytes, 2, "fp16", "int4")

    nano, agx = load_profile("jetson-orin-nano"), load_profile("jetson-agx-orin")
    dense, half = estimate_generation(facts(620_000_000), nano, 512, 128), estimate_generation(
        facts(310_000_000), nano, 512, 128)
    # half the bytes a token: faster, by less than 2x (the attention and the kernels' fixed cost stay)
    assert dense.bound == "memory" and 1.5 < half.decode_tokens_per_s / dense.decode_tokens_per_s < 2.0
    faster = estimate_generation(facts(620_000_000), agx, 512, 128)
    assert 2.2 < faster.decode_tokens_per_s / dense.decode_tokens_per_s <= 204.8 / 68  # at most the bandwidth ratio
    assert faster.prefill_tokens_per_s > dense.prefill_tokens_per_s


def test_an_iphone_build_writes_a_stateful_int4_core_ml_decoder(tmp_path):
    from edgeprune.backends.coreml.decoder import describe_decoder

    proc = run_cli("build", f"hf:{TINY}", "--profile", "iphone-15-pro", "--quantize", "int4", "--strategy", "none",
                   "--prompt-tokens", str(PROMPT), "--generate-tokens", str(GENERATE), "-o", str(tmp_path / "i"),
                   "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    package = Path(report["artifact"]["path"])
    assert report["artifact"]["format"] == "coreml" and package.name == "decoder.mlpackage"
    assert report["artifact"]["verified"]["method"] == "structural" and report["artifact"]["verified"]["passed"]
    found = describe_decoder(package)
    states = {s["name"]: s for s in found["states"]}
    assert set(states) == {"key_cache", "value_cache"}
    assert all(s["dtype"] == "FLOAT16" and list(s["shape"]) == [4, 1, 5, 512, 24] for s in states.values())
    assert found["deployment_target"] == "iOS18" and found["weights"]["fp16"] == 0 and found["weights"]["int4"] > 0
    assert found["weights"]["block_sizes"] == [16]  # 240 wide: the largest block that divides it
    assert report["generation"]["source"] == "estimated" and report["accuracy"].get("pruned") is None
    assert np.isfinite(report["generation"]["decode_tokens_per_s"])


@pytest.fixture(scope="module")
def decoder_agent():
    """A real `edgeprune agent serve` on loopback that takes uploads as large as a small decoder."""
    token = "decoder-token-0123456789abcdef"
    proc, url = start_agent(token, "--max-upload-mb", "64", "--idle-exit-s", "300")
    yield url, token
    proc.terminate()
    proc.wait(timeout=10)


def test_the_device_agent_runs_the_generation_loop_itself(tmp_path, decoder_agent):
    url, token = decoder_agent
    # x86-avx2 is not this machine's profile here: without the agent its figures would be estimated
    proc = run_cli("build", f"hf:{TINY}", "--profile", "x86-avx2", "--quantize", "int4", "--strategy", "none",
                   "--prompt-tokens", str(PROMPT), "--generate-tokens", str(GENERATE), "--device", url,
                   "-o", str(tmp_path / "a"), "--json", env={"EDGEPRUNE_AGENT_TOKEN": token})
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    gen, latency = report["generation"], report["latency"]
    assert gen["source"] == "measured" and gen["agent"] == url and gen["decode_tokens_per_s"] > 0
    assert latency["source"] == "measured" and latency["agent"] == url and latency["baseline_median_ms"] > 0
    assert report["memory"]["source"] == "measured" and report["memory"]["peak_mb"] > report["memory"]["weights_mb"]


def test_the_agent_refuses_a_decoder_whose_weights_point_elsewhere(tmp_path, decoder_agent):
    import io
    import urllib.error
    import urllib.request
    import zipfile

    url, token = decoder_agent
    source = CausalLMDecoder(load_causal_lm(TINY), 64)
    files = write_decoder(source, tmp_path, "int4")
    write_genai_config(tmp_path, source.shape)
    model = onnx.load(str(files.model), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../../etc/passwd"  # a path the agent must never open
    body = io.BytesIO()
    with zipfile.ZipFile(body, "w") as zf:
        zf.writestr("manifest.json", json.dumps({"version": 1, "models": [{"role": "artifact", "format": "decoder",
                                                                          "member": "a"}],
                                                 "inputs": [], "generation": {"prompt": 8, "gen": 4}}))
        zf.writestr("a/model.onnx", model.SerializeToString())
        zf.writestr("a/model.onnx.data", files.data.read_bytes())
        zf.writestr("a/genai_config.json", (tmp_path / "genai_config.json").read_text())
    request = urllib.request.Request(f"{url}/v1/measure", data=body.getvalue(), method="POST",
                                     headers={"Authorization": f"Bearer {token}"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=60)
    assert refused.value.code == 400 and "only in model.onnx.data" in json.loads(refused.value.read())["error"]
