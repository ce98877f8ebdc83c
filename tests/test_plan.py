import json

import pytest
import torch
from torch import nn

from edgeprune import InputError, Workload, load_workload
from edgeprune.gate import Budgets
from edgeprune.planning import make_plan
from edgeprune.profile import load_profile
from edgeprune.prune.config import parse_nm

from conftest import DIGITS, run_cli


class Block(nn.Module):
    def __init__(self, d: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.up = nn.Linear(d, hidden)
        self.down = nn.Linear(hidden, d)

    def forward(self, x):
        q, k, v = self.qkv(self.norm(x)).chunk(3, dim=-1)
        x = x + self.proj(torch.nn.functional.scaled_dot_product_attention(q, k, v))
        return x + self.down(torch.relu(self.up(x)))


class TinyLM(nn.Module):
    def __init__(self, vocab: int, d: int, hidden: int, layers: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.blocks = nn.Sequential(*[Block(d, hidden) for _ in range(layers)])
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids):
        return self.head(self.blocks(self.embed(ids)))


def _lm(vocab: int, d: int, hidden: int) -> Workload:
    return Workload(model=TinyLM(vocab, d, hidden), example_inputs=(torch.randint(0, vocab, (1, 32)),),
                    task="other", metric="perplexity", higher_is_better=False)


@pytest.fixture(scope="module")
def digits():
    return load_workload(DIGITS)


def test_ampere_on_a_transformer_with_large_linears_chooses_2_4():
    plan = make_plan(_lm(vocab=256, d=512, hidden=2048), load_profile("a100"), budgets=Budgets(latency_ms=5))
    assert plan.kind == "nm" and plan.nm == (2, 4) and plan.format == "tensorrt"
    assert plan.details["nm_eligible_mac_share"] > 0.9
    assert any("sparse tensor cores" in r for r in plan.reasons)
    assert plan.quantize_candidates == ("none", "fp16")


def test_ampere_on_narrow_layers_falls_back_to_structured(digits):
    plan = make_plan(digits, load_profile("jetson-orin-nano"), budgets=Budgets(latency_ms=5))
    assert plan.kind == "structured"
    assert any("would cover only" in r for r in plan.reasons)


@pytest.mark.parametrize("profile", ["iphone-15-pro", "x86-avx2"])
def test_dense_runtimes_get_structured_pruning_for_a_cnn(digits, profile):
    plan = make_plan(digits, load_profile(profile), budgets=Budgets(latency_ms=2))
    assert plan.kind == "structured" and plan.search == (0.0, 0.8)
    assert plan.reasons and all(isinstance(r, str) and len(r) > 20 for r in plan.reasons)


def test_x86_avx2_recommends_u8s8_int8(digits):
    plan = make_plan(digits, load_profile("x86-avx2"), budgets=Budgets(latency_ms=2))
    assert plan.quantize_candidates == ("none", "int8")
    assert any("U8 activations x S8 weights" in r for r in plan.reasons)


def test_embedding_heavy_transformer_on_a_cpu_is_hybrid():
    plan = make_plan(_lm(vocab=8000, d=64, hidden=256), load_profile("x86-avx2"), budgets=Budgets(latency_ms=2))
    assert plan.kind == "hybrid" and plan.details["embedding_param_share"] > 0.3


def test_size_only_goal_on_the_neural_engine_is_unstructured(digits):
    plan = make_plan(digits, load_profile("iphone-15-pro"), budgets=Budgets(max_size_mb=1))
    assert plan.kind == "unstructured" and any("size, not speed" in r for r in plan.reasons)


def test_no_budget_means_nothing_to_prune(digits):
    plan = make_plan(digits, load_profile("x86-avx2"))
    assert plan.sparsity == 0.0 and plan.search is None
    assert any("nothing to prune" in r for r in plan.reasons)


def test_explicit_requests_are_validated(digits):
    profile = load_profile("x86-avx2")
    assert make_plan(digits, profile, "nm", nm="2:8").sparsity == 0.75
    for nm in ("4:4", "2-4", "0:4"):
        with pytest.raises(InputError):
            parse_nm(nm)
    with pytest.raises(InputError, match=r"\[0, 1\)"):
        make_plan(digits, profile, "structured", sparsity=1.0)
    with pytest.raises(InputError, match="needs --sparsity"):
        make_plan(digits, profile, "unstructured")


def test_plan_cli_json_has_the_report_strategy_object():
    proc = run_cli("plan", str(DIGITS), "--profile", "x86-avx2", "--latency-budget-ms", "3", "--json")
    assert proc.returncode == 0, proc.stderr
    strategy = json.loads(proc.stdout)["strategy"]
    assert strategy["kind"] == "structured" and strategy["reasons"]
    assert set(strategy) >= {"kind", "sparsity", "quantization", "reasons"}
