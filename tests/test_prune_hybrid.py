"""Hybrid pruning: narrower MLPs and convolutions, sparse attention projections and embeddings."""

from __future__ import annotations

import pytest
import torch

from edgeprune.prune import HybridConfig, StructuredConfig, prune
from edgeprune.stats import count_macs, count_params
from tests.zoo import calibration, gpt, resnet, single_thread, vit  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("single_thread")


def test_vit_hybrid_narrows_mlps_and_sparsifies_attention_projections():
    model, inputs = vit()
    result = prune(model, HybridConfig(0.5), example_inputs=inputs)
    block = result.model.blocks[1]
    assert block.fc1.out_features == 128 and block.fc2.in_features == 128
    for proj in (block.attn.q_proj, block.attn.k_proj, block.attn.v_proj, block.attn.out_proj):
        assert proj.weight.shape == (64, 64)
        assert float((proj.weight == 0).float().mean()) == pytest.approx(0.5, abs=0.01)
    assert int((block.fc1.weight == 0).sum()) == 0
    split = result.details["split"]
    assert "blocks.1.fc1" in split["structured"] and "blocks.1.attn.q_proj" not in split["structured"]
    assert "blocks.1.attn.q_proj.weight" in split["unstructured"] and "blocks.1.fc1.weight" not in split["unstructured"]
    assert set(result.masks) == set(split["unstructured"])
    assert count_macs(result.model, inputs) < 0.8 * count_macs(model, inputs)


def test_gpt_hybrid_sparsifies_embeddings_but_not_the_tied_output_layer():
    model, inputs = gpt()
    result = prune(model, HybridConfig(0.5, "wanda", "wanda"), calibration(inputs), inputs)
    pruned = result.model
    assert pruned.blocks[0].mlp[0].out_features == 128
    assert "pos_emb.weight" in result.masks
    assert "tok_emb.weight" not in result.masks            # tied to lm_head, the output layer
    reasons = {d["name"]: d["reason"] for d in result.details["unstructured"]["left_dense"]}
    assert "tied" in reasons["tok_emb.weight"]
    assert pruned.lm_head.weight is pruned.tok_emb.weight


def test_cnn_hybrid_is_structured_pruning():
    model, inputs = resnet()
    hybrid = prune(model, HybridConfig(0.5), example_inputs=inputs)
    structured = prune(model, StructuredConfig(0.5), example_inputs=inputs)
    assert hybrid.masks == {} and hybrid.details["split"]["unstructured"] == []
    assert count_params(hybrid.model) == count_params(structured.model)
    with torch.no_grad():
        assert torch.equal(hybrid.model(*inputs), structured.model(*inputs))
