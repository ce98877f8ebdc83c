"""Core ML stateful decoder: a LLaMA whose key/value cache is model state, int4 per block."""

import pytest
import torch

from edgeprune.errors import UnsupportedError

pytest.importorskip("coremltools", reason="the coreml extra is not installed")
pytest.importorskip("transformers", reason="the llm extra is not installed")

from edgeprune.backends.coreml.decoder import (  # noqa: E402
    KVCacheDecoder,
    causal_mask_for,
    convert_decoder,
    describe_decoder,
)
from edgeprune.llm import prune_causal_lm  # noqa: E402
from edgeprune.llm.train import tiny_llama  # noqa: E402

CONTEXT = 128
BLOCK = 32


def llama(seed: int = 0) -> torch.nn.Module:
    """A tiny LLaMA (GQA: 4 query heads on 2 key/value heads) with weights of unit-scale outputs.

    transformers' init (std 0.02) makes attention almost uniform, which would hide a key at the
    wrong position; std 1/sqrt(fan_in) makes a wrong cache or rotary position move the logits
    by about 1 instead of 1e-3.
    """
    torch.manual_seed(seed)
    lm = tiny_llama(vocab=256, hidden=64, ffn=128, heads=4, kv_heads=2, layers=2).eval()
    with torch.no_grad():
        for p in lm.parameters():
            if p.dim() == 2:
                p.normal_(std=p.shape[1] ** -0.5)
    return lm


def pruned() -> torch.nn.Module:
    """The tiny LLaMA with half of each width removed by edgeprune's structured pruning."""
    return prune_causal_lm(llama(1), "structured", 0.5, None, criterion="magnitude",
                           restore=False).model


def prefill_then_decode(lm: torch.nn.Module, ids: torch.Tensor, prompt: int) -> tuple:
    """Returns (logits of a prefill of `prompt` tokens then one-token steps, the decoder)."""
    decoder = KVCacheDecoder(lm, max_context=CONTEXT, dtype=torch.float32)
    with torch.no_grad():
        steps = [decoder(ids[:, :prompt], causal_mask_for(prompt, prompt))]
        steps += [decoder(ids[:, t : t + 1], causal_mask_for(1, t + 1))
                  for t in range(prompt, ids.shape[1])]
    return torch.cat(steps, dim=1), decoder


def linear_weights(lm: torch.nn.Module) -> list[torch.Tensor]:
    """The distinct matrices of linear layers and embeddings (a tied embedding counts once)."""
    found = {id(m.weight): m.weight for m in lm.modules()
             if isinstance(m, (torch.nn.Linear, torch.nn.Embedding))}
    return list(found.values())


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    lm = llama()
    path, details = convert_decoder(lm, tmp_path_factory.mktemp("decoder"), max_context=CONTEXT,
                                    block_size=BLOCK)
    return lm, path, details, describe_decoder(path)


@pytest.mark.parametrize("build", [llama, pruned], ids=["dense", "pruned"])
def test_cached_prefill_and_decode_match_the_full_forward(build):
    lm = build()
    ids = torch.randint(0, 256, (1, 18), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = lm(ids).logits
    cached, decoder = prefill_then_decode(lm, ids, prompt=12)
    assert cached.shape == full.shape == (1, 18, 256)
    assert full.abs().max() > 1  # logits large enough that a wrong key position shows
    assert (cached - full).abs().max() < 1e-4
    # keys were written at positions 0..17 of every layer and head, nowhere else
    written = decoder.key_cache.abs().sum(dim=(1, 4))  # (layers, kv_heads, positions)
    assert bool((written[:, :, :18] > 0).all()) and not decoder.key_cache[:, :, :, 18:].any()
    assert decoder.value_cache.shape == (2, 1, decoder.kv_heads, CONTEXT, decoder.head_dim)


def test_a_wrong_cache_offset_is_caught():
    lm = llama()
    ids = torch.randint(0, 256, (1, 18), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = lm(ids).logits
        decoder = KVCacheDecoder(lm, max_context=CONTEXT, dtype=torch.float32)
        decoder(ids[:, :12], causal_mask_for(12, 12))
        # the step for token 12 told it is token 13: it writes one slot late and rotates wrong
        late = decoder(ids[:, 12:13], causal_mask_for(1, 14))
    assert (late[0, 0] - full[0, 12]).abs().max() > 0.1


def test_package_is_stateful_ios18_with_flexible_query_length(converted):
    lm, path, details, described = converted
    shape = (2, 1, 2, CONTEXT, 16)  # layers, batch, kv heads, context, head_dim
    assert [(s["name"], s["shape"], s["dtype"]) for s in described["states"]] == [
        ("key_cache", shape, "FLOAT16"), ("value_cache", shape, "FLOAT16")]
    assert described["deployment_target"] == details["deployment_target"] == "iOS18"
    assert described["specification_version"] == 9 and described["opset"] == "CoreML8"
    assert described["inputs"] == ["input_ids", "causal_mask"]
    assert described["outputs"] == ["logits"]
    # one model for prefill and decode: any query length and mask end from 1 to the context
    assert described["input_ranges"]["input_ids"] == [(1, 1), (1, CONTEXT)]
    assert described["input_ranges"]["causal_mask"] == [(1, 1), (1, 1), (1, CONTEXT),
                                                         (1, CONTEXT)]
    ops = described["op_counts"]
    # each layer reads both caches, writes its slice of each back; attention is the fused iOS18 op
    assert ops["slice_update"] == ops["write_state"] == 4 and ops["read_state"] >= 4
    assert ops["scaled_dot_product_attention"] == 2
    assert details["states"] == described["states"] and details["max_context"] == CONTEXT


def test_every_linear_weight_is_int4_per_block_and_the_package_is_small(converted):
    lm, path, details, described = converted
    weights = linear_weights(lm)
    assert len(weights) == 15  # 7 projections x 2 layers + the embedding the LM head shares
    assert described["weights"] == {"int4": 15, "fp16": 0, "other": 0, "block_sizes": [BLOCK]}
    assert details["int4_weights"] == 15 and details["fp16_weights"] == 0
    assert described["op_counts"]["constexpr_blockwise_shift_scale"] == 15
    fp16_bytes = 2 * sum(w.numel() for w in weights)
    # int4 plus one fp16 scale per 32 weights is 0.28 of fp16; the rest is the rotary tables
    assert path.is_dir() and path.name == "decoder.mlpackage"
    assert described["weight_bytes"] < 0.4 * fp16_bytes
    assert details["size_bytes"] == described["size_bytes"] < fp16_bytes


def test_a_pruned_model_converts_with_its_own_widths(tmp_path):
    lm = pruned()
    attn = lm.model.layers[0].self_attn
    ffn = lm.model.layers[0].mlp.down_proj.in_features
    widths = (attn.q_proj.out_features, attn.k_proj.out_features, ffn, lm.config.hidden_size)
    assert widths == (32, 16, 64, 32)  # 2 of 4 query heads, 1 of 2 kv heads, FFN 64 of 128
    path, details = convert_decoder(lm, tmp_path, max_context=CONTEXT, block_size=BLOCK)
    described = describe_decoder(path)
    assert [s["shape"] for s in described["states"]] == [(2, 1, 1, CONTEXT, 16)] * 2
    assert described["weights"] == {"int4": len(linear_weights(lm)), "fp16": 0, "other": 0,
                                    "block_sizes": [BLOCK]}


def test_a_block_size_that_does_not_divide_a_width_is_refused(tmp_path):
    with pytest.raises(UnsupportedError, match="do not divide the input widths"):
        convert_decoder(llama(), tmp_path, max_context=CONTEXT, block_size=48)
