"""The ONNX backend of a causal LM: a decoder with a KV cache, in the layout ONNX Runtime GenAI runs.

Registered for format ``onnx`` and task ``causal-lm``. The artifact is the folder ``decoder/``: ``model.onnx``
and ``model.onnx.data`` (``edgeprune.backends.onnx_tools.decoder``), ``genai_config.json`` and
the tokenizer, so ``onnxruntime_genai.Model(folder)`` generates from it and ONNX Runtime
alone runs it too. A model whose blocks are not LLaMA's (GPT-2, OPT) ships as the full-sequence
forward the general ONNX backend writes, with a note that it has no KV cache: its tokens per
second are then not measured, and a budget on them is unproven.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from edgeprune.backends.base import (
    Artifact,
    Inputs,
    LowerRequest,
    check_palettize,
    check_precision,
    get_backend,
    register_backend,
)
from edgeprune.backends.onnx.backend import checked
from edgeprune.backends.onnx_tools.decoder import write_decoder
from edgeprune.backends.onnx_tools.genai import write_genai_config, write_tokenizer
from edgeprune.backends.onnx_tools.weight_only import WeightOnly
from edgeprune.errors import UnsupportedError
from edgeprune.llm.decoder import CausalLMDecoder, kv_cache_unsupported
from edgeprune.profile import Profile
from edgeprune.tasks import CAUSAL_LM, find_causal_lm
from edgeprune.uploads import UploadModel
from edgeprune.verify import Verification

DECODER_DIR = "decoder"
# Perplexity through the artifact reads its cache: each window runs as a first chunk, then
# chunks on top of the cache (GroupQueryAttention takes several new tokens over a past at batch 1).
CHUNK = 32


def weight_only_for(profile: Profile, precision: str) -> WeightOnly | None:
    """Returns how int4/int8 weights are stored for a profile's device (None for fp32/fp16), chosen and why.

    On a CPU the block scales are fp32 (MatMulNBits' scales take the activations' type), so
    int4 blocks of 64 cost 4.5 bits a weight, as llama.cpp's Q4_0 blocks of 32 with fp16
    scales do; arithmetic in int8 (accuracy level 4). With fp16 activations (GPUs), blocks of 32.
    """
    if precision not in ("int4", "int8"):
        return None
    gpu = not profile.is_cpu
    bits = 4 if precision == "int4" else 8
    block = 32 if gpu and bits == 4 else (64 if bits == 4 else 128)
    return WeightOnly(bits=bits, block_size=block, symmetric=True, algorithm="rtn", accuracy_level=0 if gpu else 4)


def decoder_context(lm: torch.nn.Module, wanted: int | None) -> int:
    """Returns the context the decoder is written for: the model's positions, or ``wanted`` if longer."""
    positions = int(getattr(lm.config, "max_position_embeddings", 0) or 2048)
    return max(positions, int(wanted or 0))


@register_backend("onnx", task=CAUSAL_LM)
class OnnxDecoderBackend:
    """Lowers a transformers causal LM to a GenAI decoder folder; runs it here with ONNX Runtime."""

    name = "onnx"
    task = CAUSAL_LM
    precisions = frozenset({"fp32", "fp16", "int8", "int4"})
    sparsity_storage = frozenset({"structured"})
    computes_int8 = True

    def check(self, request: LowerRequest) -> None:
        check_precision(self, request)
        check_palettize(self, request)

    def preflight(self, model: torch.nn.Module, example_inputs: Inputs, request: LowerRequest) -> None:
        reason = kv_cache_unsupported(_lm(model))
        if reason is not None and request.precision == "int4":
            raise UnsupportedError(f"int4 weights are written into the KV-cache decoder, and this model gets none: "
                                   f"{reason}")

    def lower(self, model: torch.nn.Module, example_inputs: Inputs, request: LowerRequest, out_dir: Path) -> Artifact:
        lm = _lm(model)
        reason = kv_cache_unsupported(lm)
        if reason is not None:
            self.preflight(model, example_inputs, request)
            artifact = get_backend("onnx").lower(model, example_inputs, request, out_dir)
            artifact.notes.append(f"shipped as a full-sequence forward with no KV cache ({reason}): generating N tokens "
                                  "costs N passes over the growing sequence; tokens per second are not measured")
            return artifact
        source = CausalLMDecoder(lm, decoder_context(lm, request.options.get("context")))
        weight_only = weight_only_for(request.profile, request.precision)
        gpu = not request.profile.is_cpu
        compute = "fp16" if request.precision == "fp16" or (gpu and request.precision != "fp32") else "fp32"
        folder = out_dir / DECODER_DIR
        folder.mkdir()
        files = write_decoder(source, folder, request.precision, weight_only, compute)
        # a GPU's ONNX Runtime GenAI runs the decoder on its CUDA provider
        config = write_genai_config(folder, source.shape, provider_options=[{"cuda": {}}] if gpu else None)
        tokenizer = write_tokenizer(folder, request.options.get("tokenizer"))
        s = source.shape
        shipped = [files.model, files.data, config, *tokenizer]
        parts = files.details["bytes_by_part"]
        reads = sum(v for k, v in parts.items() if k not in ("embedding", "rotary", "graph"))
        facts = {"layers": s.layers, "hidden": s.hidden, "heads": s.heads, "kv_heads": s.kv_heads,
                 "head_size": s.padded_head_dim, "vocab": s.vocab, "context": s.context,
                 "matmul_params": s.matmul_params(s.padded_head_dim), "weight_bytes": reads,
                 "kv_element_bytes": 2 if compute == "fp16" else 4,
                 # int4 blocks run at the rate a probe timed them (compute.int4), else at the activations' rate:
                 # an unprobed int8 peak would make a prompt's pass look faster than it is
                 "compute_precision": compute, "weight_precision": request.precision}
        notes = [f"decoder with a KV cache for ONNX Runtime GenAI: {s.layers} layers, {s.heads} query heads over "
                 f"{s.kv_heads} key/value heads, context {s.context}"]
        if weight_only is not None:
            notes.append(f"weights: {weight_only.describe()}")
        if "head_padding" in files.details:
            notes.append(files.details["head_padding"])
        return Artifact(format=self.name, precision=request.precision, path=folder, files=shipped,
                        measure_path=files.model, notes=notes, task=CAUSAL_LM,
                        details={"decoder": {**files.details, **facts}},
                        tolerance="int4" if request.precision == "int4" else None)

    def predictor(self, artifact: Artifact) -> Callable[..., torch.Tensor] | None:
        if artifact.task != CAUSAL_LM:
            return get_backend("onnx").predictor(artifact)
        return decoder_predictor(artifact.measure_path)

    def cannot_run_reason(self) -> str | None:
        return None

    def upload(self, artifact: Artifact) -> UploadModel:
        if artifact.task != CAUSAL_LM:
            return get_backend("onnx").upload(artifact)
        return UploadModel("artifact", "decoder", artifact.path, None, artifact.precision)

    def verify_structure(self, artifact: Artifact, model: torch.nn.Module, request: LowerRequest) -> Verification:
        return checked(artifact.measure_path)


def _lm(model: torch.nn.Module) -> torch.nn.Module:
    found = find_causal_lm(model)
    if found is None:
        raise UnsupportedError(f"{type(model).__name__} holds no transformers causal LM to write as a decoder")
    return found[1]


def decoder_predictor(model_path: Path) -> Callable[..., torch.Tensor]:
    """Returns ``predict(input_ids) -> logits`` run through the decoder with its KV cache.

    Each row is its own sequence: the first ``CHUNK`` tokens run with an empty cache, every
    further chunk on top of the cache the earlier ones wrote, so a perplexity computed from
    these logits is the artifact's own as it generates.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    past = [i for i in session.get_inputs() if i.name.startswith("past_key_values.")]
    outputs = [o.name for o in session.get_outputs()]
    dtype = np.float16 if "float16" in past[0].type else np.float32

    def predict(input_ids: torch.Tensor) -> torch.Tensor:
        rows = []
        for row in input_ids.detach().cpu().numpy().astype(np.int64):
            cache = {i.name: np.zeros((1, i.shape[1], 0, i.shape[3]), dtype) for i in past}
            logits = []
            for start in range(0, len(row), CHUNK):
                chunk = row[start:start + CHUNK][None]
                feed = {"input_ids": chunk, "attention_mask": np.ones((1, start + chunk.shape[1]), np.int64), **cache}
                result = dict(zip(outputs, session.run(None, feed), strict=True))
                logits.append(result["logits"][0])
                cache = {name: result[name.replace("past_key_values.", "present.")] for name in cache}
            rows.append(np.concatenate(logits).astype(np.float32))
        return torch.from_numpy(np.stack(rows))

    return predict
