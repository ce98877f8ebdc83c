"""A LLaMA-family causal LM read as a decoder's parts: its widths and one block at a time.

This is what the decoder writers (ONNX for ONNX Runtime GenAI, Core ML) read instead of the
module tree. The parts come by tensor name, the names a checkpoint stores
(``model.layers.3.self_attn.q_proj.weight``): from a model in memory (``CausalLMDecoder``) or
straight from a checkpoint on disk, one block's tensors at a time (``CheckpointDecoder``), so
a pruned checkpoint is lowered without ever loading the model. Widths come from the weights
themselves (a pruned model's are smaller than its original config's), the rotary caches
from the model's own rotary module (every RoPE scaling transformers implements).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgeprune.backends.onnx_tools.decoder import DecoderShape, LayerWeights
from edgeprune.errors import UnsupportedError
from edgeprune.llm.blocks import decoder_arch, decoder_layers, head_layout

# transformers model types whose blocks are LLaMA's: RMSNorm, rotary q/k, grouped KV heads, SwiGLU.
KV_CACHE_FAMILIES = ("llama", "mistral", "qwen2")
PROJECTIONS = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj",
               "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj"}
Tensors = Callable[[list[str]], dict[str, torch.Tensor]]


def _array(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float32).cpu().numpy()


def kv_cache_unsupported(lm: nn.Module) -> str | None:
    """Returns why a causal LM cannot be written as a KV-cache decoder, or None when it can."""
    model_type = getattr(lm.config, "model_type", None)
    if model_type not in KV_CACHE_FAMILIES:
        return (f"the KV-cache decoder is written for {', '.join(KV_CACHE_FAMILIES)} blocks; {model_type!r} is not "
                "one of them")
    layers = decoder_layers(lm, decoder_arch(lm))
    widths = {(b.self_attn.q_proj.weight.shape, b.mlp.up_proj.weight.shape) for b in layers}
    if len(widths) > 1:
        return "its blocks have different widths; GroupQueryAttention and ONNX Runtime GenAI need one width for all"
    return None


class NamedDecoder:
    """A ``DecoderSource`` over tensors looked up by their checkpoint names, one block's at a time."""

    def __init__(self, tensors: Tensors, config, rotary: nn.Module, context: int) -> None:
        if config.model_type not in KV_CACHE_FAMILIES:
            raise UnsupportedError(f"no KV-cache decoder: {config.model_type!r} blocks are not LLaMA's")
        self.tensors, self.rotary_module = tensors, rotary
        heads, kv_heads, head_dim = head_layout(config)
        first = self.tensors([f"model.layers.0.{PROJECTIONS[p]}.weight" for p in ("q", "up")] + ["model.embed_tokens.weight"])
        q, up, embed = (first[f"model.layers.0.{PROJECTIONS['q']}.weight"], first[f"model.layers.0.{PROJECTIONS['up']}.weight"],
                        first["model.embed_tokens.weight"])
        if q.shape[0] != heads * head_dim:
            raise UnsupportedError(f"the config's {heads} heads of {head_dim} do not match q_proj's {q.shape[0]} outputs")
        tied = bool(getattr(config, "tie_word_embeddings", False)) or not self._has("lm_head.weight")
        self.shape = DecoderShape(
            family=config.model_type, layers=config.num_hidden_layers, hidden=int(embed.shape[1]), heads=heads,
            kv_heads=kv_heads, head_dim=head_dim, ffn=int(up.shape[0]), vocab=int(embed.shape[0]),
            eps=float(config.rms_norm_eps), context=int(context), tied=tied,
            qkv_bias=self._has(f"model.layers.0.{PROJECTIONS['q']}.bias"), bos_token_id=config.bos_token_id,
            eos_token_id=config.eos_token_id, pad_token_id=getattr(config, "pad_token_id", None))

    def _has(self, name: str) -> bool:
        try:
            return name in self.tensors([name])
        except KeyError:
            return False

    def _one(self, name: str) -> np.ndarray:
        return _array(self.tensors([name])[name])

    def embedding(self) -> np.ndarray:
        return self._one("model.embed_tokens.weight")

    def lm_head(self) -> np.ndarray | None:
        return None if self.shape.tied else self._one("lm_head.weight")

    def input_norm(self, index: int) -> np.ndarray:
        return self._one(f"model.layers.{index}.input_layernorm.weight")

    def final_norm(self) -> np.ndarray:
        return self._one("model.norm.weight")

    @torch.no_grad()
    def rotary(self) -> tuple[np.ndarray, np.ndarray]:
        positions = torch.arange(self.shape.context).unsqueeze(0)
        cos, sin = self.rotary_module(torch.zeros(1, dtype=torch.float32), positions)
        half = self.shape.head_dim // 2
        return _array(cos[0, :, :half]), _array(sin[0, :, :half])

    def layer(self, index: int) -> LayerWeights:
        p = f"model.layers.{index}."
        names = [f"{p}{v}.weight" for v in PROJECTIONS.values()] + [f"{p}post_attention_layernorm.weight"]
        biases = [f"{p}{PROJECTIONS[k]}.bias" for k in ("q", "k", "v")] if self.shape.qkv_bias else []
        got = {k: _array(v) for k, v in self.tensors(names + biases).items()}
        weights = {key: got[f"{p}{path}.weight"] for key, path in PROJECTIONS.items()}
        bias = {f"{key}_bias": got[f"{p}{PROJECTIONS[key]}.bias"] for key in ("q", "k", "v")} if biases else {}
        return LayerWeights(**weights, post_norm=got[f"{p}post_attention_layernorm.weight"], **bias)


class CausalLMDecoder(NamedDecoder):
    """A ``DecoderSource`` over a transformers LLaMA-family model in memory (its own tensors, no copies)."""

    def __init__(self, lm: nn.Module, context: int) -> None:
        reason = kv_cache_unsupported(lm)
        if reason is not None:
            raise UnsupportedError(f"no KV-cache decoder: {reason}")
        state = {**dict(lm.named_parameters()), **dict(lm.named_buffers())}
        if lm.get_output_embeddings().weight.data_ptr() == lm.get_input_embeddings().weight.data_ptr():
            state.pop("lm_head.weight", None)  # tied: the embedding table is the head
        super().__init__(lambda names: {n: state[n] for n in names}, lm.config, lm.model.rotary_emb, context)


class CheckpointDecoder(NamedDecoder):
    """A ``DecoderSource`` read from a checkpoint on disk, one block's tensors at a time (never the whole model)."""

    def __init__(self, folder: str | Path, context: int | None = None) -> None:
        from edgeprune.llm.checkpoint import Checkpoint
        from edgeprune.llm.hf import from_folder, transformers

        hf = transformers()
        config = from_folder(hf.AutoConfig, folder, "the model config")
        checkpoint = Checkpoint(folder)
        with torch.device("meta"):
            skeleton = hf.AutoModelForCausalLM.from_config(_one_block(config))
        rotary = type(skeleton.model.rotary_emb)(config=config)
        self.folder = Path(folder)
        super().__init__(checkpoint.tensors, config, rotary, context or config.max_position_embeddings)


def _one_block(config):
    import copy

    small = copy.deepcopy(config)
    small.num_hidden_layers = 1
    return small
