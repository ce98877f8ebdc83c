"""Structured pruning removes exactly the coupled slices it should, through every coupling.

The strongest check is a planted one: zero, in the dense model, every weight that belongs
to some chosen channels or heads (the producer's rows, the BatchNorm entries, every
consumer's columns). Those channels then contribute nothing, and they score zero, so the
engine must remove exactly them; the pruned model must then compute *the same function*
as the planted dense model. A wrong index anywhere (a concat offset, a grouped-conv slice,
a head) changes the output.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from edgeprune.errors import InputError
from edgeprune.prune import StructuredConfig, prune
from edgeprune.stats import count_macs, count_params
from tests.planted import plant
from tests.zoo import ZOO, calibration, resnet, single_thread  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("single_thread")


# transformers keep their residual stream here (zeroed channels would change what LayerNorm computes)
PLANTED = {"resnet": (), "mobilenet": (), "unet": (), "vit": ("patch_embed",), "gpt": ("tok_emb",)}


@pytest.mark.parametrize("arch", list(ZOO))
def test_pruning_planted_zero_channels_computes_the_same_function(arch):
    model, inputs = ZOO[arch]()
    planted, groups = plant(model, inputs, 0.5, PLANTED[arch])
    assert groups >= 3
    result = prune(planted, StructuredConfig(0.5, "l2", ignore=PLANTED[arch]), example_inputs=inputs)
    # every planted group (heads included) was really narrowed, none kept whole as a fallback
    assert len(result.details["groups"]) == groups
    assert all(g["channels_after"] < g["channels"] for g in result.details["groups"])
    assert count_params(result.model) < 0.75 * count_params(planted)
    with torch.no_grad():
        for batch in calibration(inputs, batches=2):
            expected = planted(*batch)
            assert torch.allclose(result.model(*batch), expected, atol=1e-5 * float(expected.abs().max()))


def test_sparsity_zero_changes_nothing():
    model, inputs = resnet()
    result = prune(model, StructuredConfig(0.0), example_inputs=inputs)
    assert count_params(result.model) == count_params(model)
    with torch.no_grad():
        assert torch.equal(result.model(*inputs), model(*inputs))


@pytest.mark.parametrize("arch", ["resnet", "mobilenet"])
def test_global_allocation_hits_the_target_and_respects_the_cap(arch):
    model, inputs = ZOO[arch]()
    result = prune(model, StructuredConfig(0.6, allocation="global", max_layer_sparsity=0.75), example_inputs=inputs)
    details = result.details
    assert abs(details["channel_sparsity"] - 0.6) < 0.03
    for g in details["groups"]:
        assert g["channels_after"] >= math.ceil(0.25 * g["channels"])
    # the global ranking really differs between groups, unlike uniform allocation
    ratios = {round(g["channels_after"] / g["channels"], 2) for g in details["groups"]}
    assert len(ratios) > 2
    assert count_macs(result.model, inputs) < 0.6 * count_macs(model, inputs)


def test_kept_channel_counts_are_multiples_of_the_channel_multiple():
    model, inputs = resnet()
    result = prune(model, StructuredConfig(0.3, channel_multiple=8), example_inputs=inputs)
    widths = [m.out_channels for m in result.model.modules() if isinstance(m, nn.Conv2d)]
    original = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert widths != original
    assert all(w % 8 == 0 for w, o in zip(widths, original, strict=True) if w != o)
    assert all(g["channels_after"] % 8 == 0 for g in result.details["groups"])


def test_first_last_protection_and_ignore():
    model, inputs = resnet()
    result = prune(model, StructuredConfig(0.5, ignore=("layer3.0.conv1.0",)), example_inputs=inputs)
    pruned = result.model
    # the stem writes the first stage's residual stream: keeping it would keep the whole stage
    assert pruned.stem[0][0].out_channels == 8
    assert pruned.layer1[0].conv2[0].out_channels == 8
    assert pruned.fc.out_features == 10                   # output width kept
    assert pruned.layer3[0].conv1[0].out_channels == 64   # ignored
    assert pruned.layer2[0].conv1[0].out_channels == 16
    # a stem that feeds only its own consumers keeps its width, unless protection is off
    model, inputs = ZOO["unet"]()
    result = prune(model, StructuredConfig(0.5), example_inputs=inputs)
    assert result.model.enc1[0][0].out_channels == model.enc1[0][0].out_channels
    assert {"layers": ["enc1.0.0", "enc1.0.1", "enc1.2.0"], "reason": "first layer enc1.0.0 is protected"} in [
        {"layers": k["layers"][:3], "reason": k["reason"]} for k in result.details["kept_whole"]]
    unprotected = prune(model, StructuredConfig(0.5, protect_first_last=False), example_inputs=inputs).model
    assert unprotected.enc1[0][0].out_channels == model.enc1[0][0].out_channels // 2
    assert unprotected.out.out_channels == model.out.out_channels
    with pytest.raises(InputError, match="not a module"):
        prune(model, StructuredConfig(0.5, ignore=("nope",)), example_inputs=inputs)


def test_bn_scale_removes_the_smallest_gammas():
    model, inputs = resnet()
    bn = model.layer1[0].conv1[1]          # its group: conv1 rows, this BN, conv2 columns
    result = prune(model, StructuredConfig(0.5, "bn_scale"), example_inputs=inputs)
    kept = result.model.layer1[0].conv1[1].weight.detach()
    removed = sorted(set(bn.weight.detach().tolist()) - set(kept.tolist()))
    assert len(kept) == 8 and len(removed) == 8
    assert float(kept.min()) > max(removed)


class DeadUnits(nn.Module):
    """An MLP whose big hidden units never fire (their bias keeps ReLU at zero)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 4)
        with torch.no_grad():
            self.fc1.weight[:8] *= 5.0
            self.fc1.bias[:8] = -100.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def test_wanda_scores_read_activations_and_taylor_reads_gradients():
    model, inputs = DeadUnits().eval(), (torch.randn(1, 8),)
    data = [(torch.randn(16, 8),) for _ in range(4)]
    config = dict(protect_first_last=False)
    wanda = prune(model, StructuredConfig(0.5, "wanda", **config), data, inputs).model
    l2 = prune(model, StructuredConfig(0.5, "l2", **config), data, inputs).model
    taylor = prune(model, StructuredConfig(0.5, "taylor", **config), data, inputs).model
    dead = model.fc1.bias[:8].detach()
    assert not torch.isin(wanda.fc1.bias.detach(), dead).any()      # dead units removed
    assert not torch.isin(taylor.fc1.bias.detach(), dead).any()     # they have no gradient either
    assert torch.isin(l2.fc1.bias.detach(), dead).sum() >= 6        # big weights keep them under l2
    with torch.no_grad():
        x = data[0][0]
        assert torch.allclose(wanda(x), model(x), atol=1e-5)        # dead units contributed nothing


def test_criteria_that_need_calibration_refuse_to_run_without_it():
    model, inputs = resnet()
    for criterion in ("taylor", "wanda"):
        with pytest.raises(InputError, match=f"{criterion} needs calibration"):
            prune(model, StructuredConfig(0.5, criterion), None, inputs)


def test_bn_scale_needs_batchnorm():
    with pytest.raises(InputError, match="BatchNorm"):
        prune(DeadUnits(), StructuredConfig(0.5, "bn_scale"), None, (torch.randn(1, 8),))
