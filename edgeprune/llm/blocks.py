"""Where each supported decoder architecture keeps its blocks, projections and widths."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from edgeprune.errors import UnsupportedError


@dataclass(frozen=True)
class DecoderArch:
    """Names of one architecture's parts, relative to a decoder block unless said otherwise.

    layers: path from the causal LM to the ModuleList of decoder blocks.
    attn_in: projections that read the attention input (q, k, v; one fused Conv1D in GPT-2).
    attn_out: the attention output projection, whose input columns are the heads.
    mlp_in: projections that read the MLP input (fc1; gate and up).
    mlp_out: the MLP down projection, whose input columns are the intermediate neurons.
    ffn_field: the config field holding the MLP width.
    head_pruning: whether the config can describe fewer heads at the same hidden size
        (OPT and GPT-2 derive head_dim from hidden_size / heads, so they cannot).
    hidden_pruning: how the hidden width (the residual stream) can shrink: ``"free"`` (the
        config states head_dim, so any width), ``"with_heads"`` (head_dim is hidden_size /
        heads: heads go with it, hidden = heads x head_dim), or ``""`` (kept).
    attn_module: the attention module inside a block, whose width attributes follow its heads.
    """

    family: str
    layers: str
    attn_in: tuple[str, ...]
    attn_out: str
    mlp_in: tuple[str, ...]
    mlp_out: str
    ffn_field: str
    head_pruning: bool
    hidden_pruning: str = ""
    attn_module: str = "self_attn"

    def input_groups(self) -> list[tuple[str, ...]]:
        """Returns the block's projections grouped by shared input, in execution order."""
        return [self.attn_in, (self.attn_out,), self.mlp_in, (self.mlp_out,)]

    def projections(self) -> list[str]:
        """Returns every prunable projection of a block, in execution order."""
        return [name for group in self.input_groups() for name in group]


_OPT = DecoderArch(
    family="opt",
    layers="model.decoder.layers",
    attn_in=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    attn_out="self_attn.out_proj",
    mlp_in=("fc1",),
    mlp_out="fc2",
    ffn_field="ffn_dim",
    head_pruning=False,
)
_LLAMA = DecoderArch(
    family="llama",
    layers="model.layers",
    attn_in=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    attn_out="self_attn.o_proj",
    mlp_in=("mlp.gate_proj", "mlp.up_proj"),
    mlp_out="mlp.down_proj",
    ffn_field="intermediate_size",
    head_pruning=True,
    hidden_pruning="free",
)
_GPT2 = DecoderArch(
    family="gpt2",
    layers="transformer.h",
    attn_in=("attn.c_attn",),
    attn_out="attn.c_proj",
    mlp_in=("mlp.c_fc",),
    mlp_out="mlp.c_proj",
    ffn_field="n_inner",
    head_pruning=False,
    hidden_pruning="with_heads",
    attn_module="attn",
)
# LLaMA-family models share LLaMA's module names and config fields.
ARCHITECTURES = {"opt": _OPT, "llama": _LLAMA, "mistral": _LLAMA, "qwen2": _LLAMA, "gpt2": _GPT2}


def decoder_arch(model: nn.Module) -> DecoderArch:
    """Returns the adapter for a transformers causal LM, or raises UnsupportedError."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in ARCHITECTURES:
        raise UnsupportedError(
            f"LLM pruning supports {', '.join(sorted(ARCHITECTURES))} models, got {model_type!r}"
        )
    return ARCHITECTURES[model_type]


def decoder_layers(model: nn.Module, arch: DecoderArch) -> nn.ModuleList:
    """Returns the model's decoder blocks in order."""
    return model.get_submodule(arch.layers)


def is_conv1d(module: nn.Module) -> bool:
    """Returns whether ``module`` is transformers' Conv1D (a linear layer storing W transposed)."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def weight_matrix(module: nn.Module) -> torch.Tensor:
    """Returns the projection's weight as an (out_features, in_features) view of the parameter."""
    return module.weight.t() if is_conv1d(module) else module.weight


def head_layout(config) -> tuple[int, int, int]:
    """Returns (query heads, key/value heads, head_dim) of a decoder config."""
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return heads, kv_heads, head_dim


def ffn_width(config, arch: DecoderArch) -> int:
    """Returns the MLP intermediate width the config describes."""
    width = getattr(config, arch.ffn_field, None)
    # GPT-2 leaves n_inner unset to mean four times the hidden size.
    return width if width is not None else 4 * config.hidden_size
