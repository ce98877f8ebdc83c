"""Every LLM pruning method on tiny random OPT and LLaMA models: shapes, patterns, reloads."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from edgeprune.errors import InputError  # noqa: E402
from edgeprune.llm import (  # noqa: E402
    CausalLMLogits,
    load_causal_lm,
    prune_causal_lm,
    reload_max_abs_diff,
    save_pretrained,
)
from edgeprune.llm.blocks import decoder_arch, decoder_layers, weight_matrix  # noqa: E402

VOCAB = 96
SEQ = 32


def tiny_opt():
    torch.manual_seed(0)
    config = transformers.OPTConfig(
        vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        ffn_dim=128, max_position_embeddings=64, word_embed_proj_dim=64,
    )
    return transformers.OPTForCausalLM(config).eval()


def tiny_llama():
    # grouped-query attention: 8 query heads in 4 key/value groups
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=64,
    )
    return transformers.LlamaForCausalLM(config).eval()


def tiny_qwen2():
    torch.manual_seed(0)
    config = transformers.Qwen2Config(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=64,
    )
    return transformers.Qwen2ForCausalLM(config).eval()


def tiny_gpt2():
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=64,
        bos_token_id=0, eos_token_id=0,
    )
    return transformers.GPT2LMHeadModel(config).eval()


def calibration(count: int = 8):
    generator = torch.Generator().manual_seed(1)
    return [(torch.randint(0, VOCAB, (1, SEQ), generator=generator),) for _ in range(count)]


def projections(model):
    arch = decoder_arch(model)
    for block in decoder_layers(model, arch):
        for name in arch.projections():
            yield name, weight_matrix(block.get_submodule(name))


RUNS = [
    ("unstructured", "magnitude"),
    ("unstructured", "wanda"),
    ("unstructured", "sparsegpt"),
    ("nm", "magnitude"),
    ("nm", "wanda"),
    ("nm", "sparsegpt"),
    ("structured", "wanda"),
    ("structured", "magnitude"),
]


@pytest.mark.parametrize("build", [tiny_opt, tiny_llama], ids=["opt", "llama"])
@pytest.mark.parametrize(("method", "criterion"), RUNS, ids=[f"{m}-{c}" for m, c in RUNS])
@torch.no_grad()
def test_every_method_saves_a_directory_that_reloads_with_the_same_logits(build, method, criterion, tmp_path):
    model = build()
    ids = torch.cat([batch[0] for batch in calibration(3)])
    result = prune_causal_lm(model, method, 0.5 if method != "structured" else 0.3, calibration(), criterion=criterion)
    pruned = result.model

    # a copy was pruned; the dense model is untouched
    dense_zeros = sum(int((w == 0).sum()) for _, w in projections(model))
    assert dense_zeros == 0
    assert not torch.allclose(CausalLMLogits(model)(ids), CausalLMLogits(pruned)(ids))

    save_pretrained(pruned, tmp_path)
    assert reload_max_abs_diff(pruned, tmp_path, ids) < 1e-5
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path))
    assert sum(p.numel() for p in reloaded.parameters()) == result.details["params_after"]

    details = result.details
    if method == "structured" and decoder_arch(model).hidden_pruning:
        # every width loses about 0.3: hidden channels, FFN neurons, key/value groups
        for width in ("hidden_width", "ffn_width"):
            assert details[width]["after"] / details[width]["before"] == pytest.approx(0.7, abs=0.06), width
        assert details["heads"]["after"][1] == 3
    elif method == "structured":  # OPT keeps hidden width and heads: the FFN takes the whole cut
        assert details["params_after"] < details["params_before"]
        assert details["block_sparsity"] == pytest.approx(0.3, abs=0.04)
    else:
        assert details["params_after"] == details["params_before"]
        assert details["block_sparsity"] == pytest.approx(0.5, abs=0.01)
        for name, weight in projections(pruned):
            assert (weight == 0).float().mean().item() == pytest.approx(0.5, abs=0.02), name


@pytest.mark.parametrize("build", [tiny_opt, tiny_llama, tiny_gpt2], ids=["opt", "llama", "gpt2"])
@pytest.mark.parametrize("criterion", ["wanda", "sparsegpt"])
def test_2_4_pattern_is_exact_on_every_block_projection(build, criterion):
    pruned = prune_causal_lm(build(), "nm", 0.0, calibration(), criterion=criterion, nm=(2, 4)).model
    checked = 0
    for name, weight in projections(pruned):
        groups = (weight != 0).reshape(weight.shape[0], -1, 4).sum(-1)
        # random weights have no zeros of their own: exactly two survive in every four inputs
        assert torch.equal(groups, torch.full_like(groups, 2)), name
        checked += 1
    assert checked == 2 * len(decoder_arch(pruned).projections())


@pytest.mark.parametrize("build", [tiny_opt, tiny_llama, tiny_gpt2], ids=["opt", "llama", "gpt2"])
def test_embeddings_lm_head_and_norms_stay_dense_and_unchanged(build):
    model = build()
    pruned = prune_causal_lm(model, "unstructured", 0.5, calibration(), criterion="sparsegpt").model
    prunable = {id(block.get_submodule(name).weight) for block in decoder_layers(pruned, decoder_arch(pruned)) for name in decoder_arch(pruned).projections()}
    dense = dict(model.named_parameters())
    untouched = [(n, p) for n, p in pruned.named_parameters() if id(p) not in prunable]
    assert any("embed" in n or "wte" in n for n, _ in untouched)
    for name, param in untouched:
        assert torch.equal(param, dense[name]), name


def test_structured_llama_removes_whole_kv_groups_and_updates_the_config(tmp_path):
    model = tiny_llama()
    result = prune_causal_lm(model, "structured", 0.3, calibration())
    pruned = result.model
    config = pruned.config
    # 8 heads in 4 groups -> 3 groups; the hidden width 64 * 0.7 = 44.8 would break LLaMA's
    # hidden_size % heads rule, so the nearest width it accepts with 6 heads, 42, is kept
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (6, 3, 8)
    assert config.hidden_size == 42 and result.details["hidden_width"] == {"before": 64, "after": 42}
    assert result.details["heads"] == {"before": [8, 4], "after": [6, 3]}
    for block in pruned.model.layers:
        attn = block.self_attn
        assert attn.q_proj.weight.shape == (48, 42)
        assert attn.k_proj.weight.shape == attn.v_proj.weight.shape == (24, 42)
        assert attn.o_proj.weight.shape == (42, 48)
        assert block.input_layernorm.weight.shape == block.post_attention_layernorm.weight.shape == (42,)
        assert block.mlp.gate_proj.weight.shape == (config.intermediate_size, 42)
        assert block.mlp.down_proj.weight.shape == (42, config.intermediate_size)
    assert pruned.model.embed_tokens.weight.shape == (VOCAB, 42) and pruned.lm_head.weight.shape == (VOCAB, 42)
    assert config.intermediate_size == 67
    save_pretrained(pruned, tmp_path)
    assert load_causal_lm(tmp_path).config.num_key_value_heads == 3
    assert reload_max_abs_diff(pruned, tmp_path, calibration(1)[0][0]) < 1e-5


def test_structured_qwen2_keeps_a_head_count_between_the_extremes(tmp_path):
    # Qwen2 has no hidden_size % heads rule, so 3 of 4 groups can stay
    result = prune_causal_lm(tiny_qwen2(), "structured", 0.3, calibration())
    assert result.details["heads"]["after"] == [6, 3]
    save_pretrained(result.model, tmp_path)
    assert reload_max_abs_diff(result.model, tmp_path, calibration(1)[0][0]) < 1e-5


def test_structured_gpt2_prunes_heads_with_the_hidden_width_and_reloads(tmp_path):
    # GPT-2's head size is hidden / heads: the residual stream narrows by whole heads
    result = prune_causal_lm(tiny_gpt2(), "structured", 0.2, calibration())
    assert result.details["heads"]["after"] == [3, 3]
    assert result.details["hidden_width"] == {"before": 64, "after": 48}
    config = result.model.config
    assert (config.n_embd, config.n_head) == (48, 3)
    assert config.n_inner == result.details["ffn_width"]["after"] == 205
    attn = result.model.transformer.h[0].attn
    assert attn.c_attn.weight.shape == (48, 3 * 48) and (attn.num_heads, attn.split_size) == (3, 48)
    assert result.model.lm_head.weight is result.model.transformer.wte.weight  # still tied
    save_pretrained(result.model, tmp_path)
    assert reload_max_abs_diff(result.model, tmp_path, calibration(1)[0][0]) < 1e-5


def test_ffn_width_multiple_is_respected():
    result = prune_causal_lm(tiny_opt(), "structured", 0.25, calibration(), multiple=16)
    assert result.details["ffn_width"]["after"] % 16 == 0


@torch.no_grad()
def test_least_squares_restoration_reduces_the_block_output_error():
    model = tiny_opt()
    ids = torch.cat([batch[0] for batch in calibration()])
    dense = CausalLMLogits(model)(ids)
    errors = {}
    for restore in (False, True):
        pruned = prune_causal_lm(model, "structured", 0.3, calibration(), restore=restore).model
        errors[restore] = float((CausalLMLogits(pruned)(ids) - dense).pow(2).mean())
    assert errors[True] < 0.5 * errors[False]


def test_wrapped_model_comes_back_wrapped():
    wrapped = CausalLMLogits(tiny_llama())
    result = prune_causal_lm(wrapped, "unstructured", 0.5, calibration())
    assert isinstance(result.model, CausalLMLogits)
    assert result.model.lm is not wrapped.lm


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "blocks", "sparsity": 0.5}, "method"),
        ({"method": "unstructured", "sparsity": 1.5}, "sparsity"),
        ({"method": "unstructured", "sparsity": 0.5, "criterion": "taylor"}, "criterion"),
        ({"method": "structured", "sparsity": 0.5, "criterion": "sparsegpt"}, "structured"),
        ({"method": "nm", "sparsity": 0.5, "nm": (4, 4)}, "N:M"),
    ],
)
def test_bad_arguments_are_input_errors(kwargs, message):
    with pytest.raises(InputError, match=message):
        prune_causal_lm(tiny_opt(), calibration=calibration(), **kwargs)


def test_wanda_without_calibration_is_an_input_error():
    with pytest.raises(InputError, match="calibration"):
        prune_causal_lm(tiny_opt(), "unstructured", 0.5, None, criterion="wanda")
    # magnitude needs none
    assert prune_causal_lm(tiny_opt(), "unstructured", 0.5, None, criterion="magnitude").details["block_sparsity"] > 0.49
