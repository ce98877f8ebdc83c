"""Configs and build options: bad requests are one-line InputErrors (exit code 2)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import nn

from edgeprune.errors import InputError
from edgeprune.profile import load_profile
from edgeprune.prune import (
    HybridConfig,
    NMConfig,
    PruneResult,
    StructuredConfig,
    UnstructuredConfig,
    config_for,
    prune,
    register_pruner,
)


@pytest.mark.parametrize("sparsity", [-0.1, 1.0, 1.5, float("nan"), True, "0.5"])
def test_sparsity_outside_zero_one_is_refused(sparsity):
    for make in (StructuredConfig, UnstructuredConfig, HybridConfig):
        with pytest.raises(InputError, match=r"sparsity must be a number in \[0, 1\)"):
            make(sparsity)
    with pytest.raises(InputError, match="sparsity must be"):
        config_for("structured", sparsity)


@pytest.mark.parametrize("nm", ["4:4", "3:2", "0:4"])
def test_nm_with_n_not_below_m_is_refused(nm):
    with pytest.raises(InputError, match="0 < N < M"):
        config_for("nm", nm=nm)


def test_bad_options_are_one_line_errors():
    bad = [
        lambda: config_for("pruned", 0.5),
        lambda: config_for("structured", 0.5, criterion="magnitude"),
        lambda: config_for("unstructured", 0.5, criterion="l2"),
        lambda: config_for("nm", nm="2-4"),
        lambda: config_for("structured", 0.5, nm="2:4"),
        lambda: config_for("structured"),
        lambda: config_for("nm", 0.7, nm="2:4"),
        lambda: config_for("none", 0.5),
        lambda: StructuredConfig(0.9),
        lambda: StructuredConfig(0.5, channel_multiple=0),
        lambda: StructuredConfig(0.5, allocation="random"),
        lambda: UnstructuredConfig(0.5, "wanda", scope="global"),
    ]
    for make in bad:
        with pytest.raises(InputError) as info:
            make()
        assert "\n" not in str(info.value) and len(str(info.value)) < 200


def test_config_for_reads_the_profile():
    jetson = load_profile("jetson-orin-nano")
    x86 = load_profile("x86-avx2")
    assert config_for("structured", 0.5, profile=x86) == StructuredConfig(0.5, channel_multiple=8)
    assert config_for("structured", 0.3, "taylor") == StructuredConfig(0.3, "taylor")
    assert config_for("nm", profile=jetson) == NMConfig(2, 4, min_channels=256)
    assert config_for("nm", 0.5, "wanda", "2:4", x86) == NMConfig(2, 4, "wanda", min_channels=0)
    assert config_for("nm", nm="1:4").sparsity == 0.75
    assert config_for("unstructured", 0.8, "global_magnitude") == UnstructuredConfig(0.8, scope="global")
    assert config_for("hybrid", 0.5, "wanda", profile=x86) == HybridConfig(0.5, "wanda", "wanda", channel_multiple=8)
    assert config_for("none") is None


def test_calibrated_criteria_need_calibration_data():
    model, inputs = nn.Linear(4, 4), (torch.randn(1, 4),)
    for config in (StructuredConfig(0.5, "taylor"), UnstructuredConfig(0.5, "wanda"), NMConfig(criterion="wanda"),
                   HybridConfig(0.5, unstructured_criterion="wanda")):
        with pytest.raises(InputError, match="needs calibration data, but the workload has none"):
            prune(model, config, calibration=None, example_inputs=inputs)


@dataclass(frozen=True)
class HalveBiases:
    """A new method is a config and a registered handler; nothing else changes."""

    factor: float = 0.5


@register_pruner(HalveBiases)
def _halve(model, config, calibration, example_inputs):
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear) and m.bias is not None:
                m.bias.mul_(config.factor)
    return PruneResult(model, details={"kind": "halve-biases"})


def test_registry_dispatches_on_the_config_type_and_leaves_the_input_model_alone():
    model = nn.Linear(4, 4)
    original = model.bias.detach().clone()
    result = prune(model, HalveBiases(), example_inputs=(torch.randn(1, 4),))
    assert torch.allclose(result.model.bias, original * 0.5)
    assert torch.equal(model.bias, original)
    assert result.details["config"] == {"factor": 0.5}
    with pytest.raises(InputError, match="no pruning method for str"):
        prune(model, "structured", example_inputs=(torch.randn(1, 4),))
