"""Explicit multi-head attention, and rewriting nn.MultiheadAttention into it.

nn.MultiheadAttention keeps q/k/v in one packed parameter and computes inside a fused
function, so dependency tracers see through it and its heads cannot be removed. The
explicit module computes the same function with four nn.Linear layers and
scaled_dot_product_attention, so heads become ordinary output slices of q/k/v and input
slices of the output projection, and the module exports to ONNX like any other.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgeprune.errors import UnsupportedError


class ExplicitAttention(nn.Module):
    """Multi-head attention with separate q/k/v/o projections; a drop-in for nn.MultiheadAttention.

    ``num_heads`` and ``head_dim`` are plain attributes that structured pruning updates when it
    removes heads; the inner width ``num_heads * head_dim`` may differ from ``embed_dim``.
    ``kept_heads`` lists which of the original heads remain, so a per-head 3-D ``attn_mask``
    written for the original model still applies.
    """

    def __init__(self, embed_dim: int, num_heads: int, kdim: int | None = None, vdim: int | None = None,
                 bias: bool = True, dropout: float = 0.0, batch_first: bool = False) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.dropout = dropout
        self.batch_first = batch_first
        self.kept_heads: tuple[int, ...] = tuple(range(num_heads))
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.k_proj = nn.Linear(kdim or embed_dim, embed_dim, bias=bias)
        self.v_proj = nn.Linear(vdim or embed_dim, embed_dim, bias=bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = (t.unsqueeze(1) for t in (query, key, value))
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        b, tq, _ = query.shape
        ts = key.shape[1]
        q = self.q_proj(query).view(b, tq, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(key).view(b, ts, self.num_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(value).view(b, ts, self.num_heads, self.head_dim).transpose(1, 2)
        mask = self._additive_mask(attn_mask, key_padding_mask, b, tq, ts, q.dtype)
        causal = is_causal and mask is None
        dropout = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            # the probabilities are part of the output, so compute them explicitly
            scores = q @ k.transpose(-2, -1) / (self.head_dim ** 0.5)
            if causal:
                mask = torch.ones(tq, ts, dtype=torch.bool, device=q.device).tril().logical_not()
                mask = torch.zeros(tq, ts, dtype=q.dtype, device=q.device).masked_fill(mask, float("-inf"))
            if mask is not None:
                scores = scores + mask
            probs = F.dropout(scores.softmax(-1), dropout, self.training)
            y = probs @ v
            weights = probs.mean(1) if average_attn_weights else probs
            if unbatched:
                weights = weights.squeeze(0)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=causal)
        y = self.out_proj(y.transpose(1, 2).reshape(b, tq, self.num_heads * self.head_dim))
        if not self.batch_first:
            y = y.transpose(0, 1)
        if unbatched:
            y = y.squeeze(1)
        return y, weights

    def _additive_mask(self, attn_mask: torch.Tensor | None, key_padding_mask: torch.Tensor | None,
                       b: int, tq: int, ts: int, dtype: torch.dtype) -> torch.Tensor | None:
        """Returns one float mask broadcastable to (batch, heads, tq, ts), or None."""
        mask = None
        if attn_mask is not None:
            mask = _as_additive(attn_mask, dtype)
            if mask.dim() == 3:  # (batch * original heads, tq, ts): keep the rows of the kept heads
                mask = mask.view(b, -1, tq, ts)[:, list(self.kept_heads)]
        if key_padding_mask is not None:
            pad = _as_additive(key_padding_mask, dtype).view(b, 1, 1, ts)
            mask = pad if mask is None else mask + pad
        return mask


def _as_additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Returns a float mask; boolean True means 'may not attend', as in nn.MultiheadAttention."""
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))
    return mask.to(dtype)


def from_multihead_attention(mha: nn.MultiheadAttention) -> ExplicitAttention:
    """Returns an ExplicitAttention computing the same function as ``mha``, sharing no storage."""
    if mha.bias_k is not None or mha.add_zero_attn:
        raise UnsupportedError("nn.MultiheadAttention with add_bias_kv or add_zero_attn cannot be rewritten for pruning")
    e = mha.embed_dim
    has_bias = mha.in_proj_bias is not None
    out = ExplicitAttention(e, mha.num_heads, mha.kdim, mha.vdim, bias=has_bias,
                            dropout=mha.dropout, batch_first=mha.batch_first)
    if mha._qkv_same_embed_dim:
        q_w, k_w, v_w = mha.in_proj_weight.detach().chunk(3, 0)
    else:
        q_w, k_w, v_w = (w.detach() for w in (mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight))
    with torch.no_grad():
        for proj, weight in zip((out.q_proj, out.k_proj, out.v_proj), (q_w, k_w, v_w), strict=True):
            proj.weight.copy_(weight)
        if has_bias:
            for proj, bias in zip((out.q_proj, out.k_proj, out.v_proj), mha.in_proj_bias.detach().chunk(3), strict=True):
                proj.bias.copy_(bias)
        out.out_proj.weight.copy_(mha.out_proj.weight)
        if mha.out_proj.bias is not None and out.out_proj.bias is not None:
            out.out_proj.bias.copy_(mha.out_proj.bias)
    out.train(mha.training)
    return out.to(device=mha.out_proj.weight.device, dtype=mha.out_proj.weight.dtype)


def rewrite_multihead_attention(model: nn.Module) -> list[str]:
    """Returns the names of the nn.MultiheadAttention modules replaced in place by ExplicitAttention."""
    targets = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)]
    for name, mha in targets:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, from_multihead_attention(mha))
    return [name for name, _ in targets]
