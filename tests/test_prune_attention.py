"""Attention: the explicit rewrite of nn.MultiheadAttention, head pruning, and tied embeddings."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgeprune.errors import UnsupportedError
from edgeprune.prune import ExplicitAttention, StructuredConfig, prune, rewrite_multihead_attention
from edgeprune.stats import count_macs
from tests.zoo import gpt, single_thread, vit  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_explicit_attention_equals_multihead_attention(batch_first, bias):
    torch.manual_seed(0)
    holder = nn.Module()
    holder.mha = nn.MultiheadAttention(16, 4, bias=bias, batch_first=batch_first).eval()
    mha = holder.mha
    assert rewrite_multihead_attention(holder) == ["mha"]
    explicit = holder.mha
    assert isinstance(explicit, ExplicitAttention)
    x = torch.randn(2, 5, 16) if batch_first else torch.randn(5, 2, 16)
    causal = torch.ones(5, 5, dtype=torch.bool).triu(1)
    padding = torch.tensor([[False] * 5, [False] * 3 + [True] * 2])
    cases = [
        {"need_weights": False},
        {},
        {"attn_mask": causal, "need_weights": False},
        {"attn_mask": causal, "key_padding_mask": padding},
        {"attn_mask": torch.randn(8, 5, 5), "average_attn_weights": False},
    ]
    for kwargs in cases:
        out, weights = mha(x, x, x, **kwargs)
        out2, weights2 = explicit(x, x, x, **kwargs)
        assert torch.allclose(out, out2, atol=1e-6), kwargs
        assert (weights is None) == (weights2 is None)
        if weights is not None:
            assert torch.allclose(weights, weights2, atol=1e-6)


def test_explicit_attention_handles_other_key_widths_and_unbatched_inputs():
    torch.manual_seed(1)
    mha = nn.MultiheadAttention(16, 2, kdim=8, vdim=12).eval()
    holder = nn.Sequential(mha)
    rewrite_multihead_attention(holder)
    q, k, v = torch.randn(3, 16), torch.randn(6, 8), torch.randn(6, 12)
    assert torch.allclose(mha(q, k, v)[0], holder[0](q, k, v)[0], atol=1e-6)


def test_vit_heads_are_pruned_whole_and_the_module_stays_consistent():
    model, inputs = vit()
    result = prune(model, StructuredConfig(0.5), example_inputs=inputs)
    attn = result.model.blocks[0].attn
    assert isinstance(attn, ExplicitAttention)
    assert attn.num_heads == 2 and attn.head_dim == 16 and len(attn.kept_heads) == 2
    assert attn.q_proj.out_features == attn.k_proj.out_features == attn.v_proj.out_features == 32
    # the residual stream (patch embedding, class token, positions, norms) is narrowed too
    assert attn.out_proj.in_features == 32 and attn.out_proj.out_features == 32
    assert result.model.patch_embed.out_channels == 32 and result.model.pos_embed.shape[-1] == 32
    assert result.details["attention_rewritten"] == ["blocks.0.attn", "blocks.1.attn"]
    # a per-head mask written for the original four heads still applies to the kept two
    assert attn.kept_heads != (0, 1)  # so that picking the first rows would be caught
    x = torch.randn(1, 17, attn.q_proj.in_features)
    mask = torch.zeros(4, 17, 17)
    mask[list(attn.kept_heads), :, 0] = float("-inf")
    blocked = attn(x, x, x, attn_mask=mask, need_weights=True, average_attn_weights=False)[1]
    assert torch.all(blocked[..., 0] == 0)


def test_a_hand_written_gpt_loses_its_residual_width_heads_and_neurons():
    # tied embeddings, hand-written attention: at 0.5 the MACs fall to at most 0.35 of the dense model's
    model, inputs = gpt()
    result = prune(model, StructuredConfig(0.5, channel_multiple=8), example_inputs=inputs)
    assert count_macs(result.model, inputs) <= 0.35 * count_macs(model, inputs)
    heads = [g for g in result.details["groups"] if g.get("unit") == "head"]
    assert len(heads) == 2 and all(g["heads"] == 4 and g["heads_after"] == 2 for g in heads)
    assert result.model.tok_emb.weight.shape == (64, 32) and result.model.lm_head.weight is result.model.tok_emb.weight
    assert [k["reason"] for k in result.details["kept_whole"]] == ["output layer lm_head keeps the output width"]


def test_hand_written_attention_head_count_is_updated_and_tied_embeddings_stay_tied():
    model, inputs = gpt()
    result = prune(model, StructuredConfig(0.5, protect_first_last=False), example_inputs=inputs)
    pruned = result.model
    for block in pruned.blocks:
        assert block.attn.n_head == 2 and block.attn.head_dim == 16
        assert block.attn.q.out_features == 32 and block.attn.proj.in_features == 32
    assert pruned.lm_head.weight is pruned.tok_emb.weight
    assert pruned.tok_emb.weight.shape == (64, 32)
    assert dict(pruned.named_parameters()).keys() == dict(model.named_parameters()).keys()
    with torch.no_grad():
        assert pruned(*inputs).shape == (1, 16, 64)


class WidthFromInput(nn.Module):
    """Attention that reshapes with the *input* width, as nanoGPT does: removing heads breaks it."""

    def __init__(self, dim: int = 32, n_head: int = 4) -> None:
        super().__init__()
        self.n_head = n_head
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = (p(x).view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for p in (self.q, self.k, self.v))
        return self.o(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, c))


def test_attention_that_cannot_lose_heads_is_kept_whole_and_the_rest_is_pruned():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(8, 32), WidthFromInput(), nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32),
                          nn.Linear(32, 4)).eval()
    inputs = (torch.randn(1, 6, 8),)
    result = prune(model, StructuredConfig(0.5), example_inputs=inputs)
    assert result.model[1].n_head == 4 and result.model[1].q.out_features == 32
    assert result.model[2].out_features == 32          # the MLP was still narrowed
    reasons = [k["reason"] for k in result.details["kept_whole"]]
    assert any(r.startswith("heads kept: the model failed to run") for r in reasons)
    with torch.no_grad():
        assert result.model(*inputs).shape == (1, 6, 4)


class BiasKV(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(16, 2, add_bias_kv=True, batch_first=True)
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.attn(x, x, x)[0])


def test_multihead_attention_with_bias_kv_is_refused_clearly():
    with pytest.raises(UnsupportedError, match="add_bias_kv"):
        prune(BiasKV().eval(), StructuredConfig(0.5), example_inputs=(torch.randn(1, 4, 16),))


def test_ignoring_an_attention_module_keeps_all_its_heads():
    model, inputs = vit()
    result = prune(model, StructuredConfig(0.5, ignore=("blocks.1.attn",)), example_inputs=inputs)
    assert result.model.blocks[1].attn.num_heads == 4
    assert result.model.blocks[0].attn.num_heads == 2
    assert result.model.blocks[1].fc1.out_features == 128
