"""A transformers LLaMA-family causal LM read as a decoder's parts: its widths and one block at a time.

This is what the decoder writers (ONNX for ONNX Runtime GenAI, Core ML) read instead of the
module tree: widths from the weights themselves (a pruned model's are smaller than its
original config's), the rotary caches from the model's own rotary module (every RoPE
scaling transformers implements), and each block's weights as float32 arrays.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from edgeprune.backends.onnx_tools.decoder import DecoderShape, LayerWeights
from edgeprune.errors import UnsupportedError
from edgeprune.llm.blocks import decoder_arch, decoder_layers, head_layout

# transformers model types whose blocks are LLaMA's: RMSNorm, rotary q/k, grouped KV heads, SwiGLU.
KV_CACHE_FAMILIES = ("llama", "mistral", "qwen2")


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


class CausalLMDecoder:
    """A ``DecoderSource`` over a transformers LLaMA-family model in memory."""

    def __init__(self, lm: nn.Module, context: int) -> None:
        reason = kv_cache_unsupported(lm)
        if reason is not None:
            raise UnsupportedError(f"no KV-cache decoder: {reason}")
        self.lm = lm
        config = lm.config
        arch = decoder_arch(lm)
        self.layers = decoder_layers(lm, arch)
        heads, kv_heads, head_dim = head_layout(config)
        first = self.layers[0]
        embed = lm.get_input_embeddings().weight
        head = lm.get_output_embeddings().weight
        self.shape = DecoderShape(
            family=config.model_type, layers=len(self.layers), hidden=int(embed.shape[1]), heads=heads,
            kv_heads=kv_heads, head_dim=head_dim, ffn=int(first.mlp.up_proj.weight.shape[0]),
            vocab=int(embed.shape[0]), eps=float(config.rms_norm_eps), context=int(context),
            tied=head.data_ptr() == embed.data_ptr(), qkv_bias=first.self_attn.q_proj.bias is not None,
            bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
            pad_token_id=getattr(config, "pad_token_id", None))
        if first.self_attn.q_proj.weight.shape[0] != heads * head_dim:
            raise UnsupportedError(f"the config's {heads} heads of {head_dim} do not match q_proj's "
                                   f"{first.self_attn.q_proj.weight.shape[0]} outputs")

    def embedding(self) -> np.ndarray:
        return _array(self.lm.get_input_embeddings().weight)

    def lm_head(self) -> np.ndarray | None:
        return None if self.shape.tied else _array(self.lm.get_output_embeddings().weight)

    def input_norm(self, index: int) -> np.ndarray:
        return _array(self.layers[index].input_layernorm.weight)

    def final_norm(self) -> np.ndarray:
        return _array(self.lm.model.norm.weight)

    @torch.no_grad()
    def rotary(self) -> tuple[np.ndarray, np.ndarray]:
        positions = torch.arange(self.shape.context).unsqueeze(0)
        probe = torch.zeros(1, dtype=torch.float32)
        cos, sin = self.lm.model.rotary_emb(probe, positions)
        half = self.shape.head_dim // 2
        return _array(cos[0, :, :half]), _array(sin[0, :, :half])

    def layer(self, index: int) -> LayerWeights:
        block = self.layers[index]
        attn, mlp = block.self_attn, block.mlp

        def bias(m: nn.Linear) -> np.ndarray | None:
            return _array(m.bias) if m.bias is not None else None

        return LayerWeights(
            q=_array(attn.q_proj.weight), k=_array(attn.k_proj.weight), v=_array(attn.v_proj.weight),
            o=_array(attn.o_proj.weight), post_norm=_array(block.post_attention_layernorm.weight),
            gate=_array(mlp.gate_proj.weight), up=_array(mlp.up_proj.weight), down=_array(mlp.down_proj.weight),
            q_bias=bias(attn.q_proj), k_bias=bias(attn.k_proj), v_bias=bias(attn.v_proj))
