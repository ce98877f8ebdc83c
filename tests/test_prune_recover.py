"""Recovery: BatchNorm re-estimation and distillation bring the pruned model back toward the
dense one, and the sparsity masks hold through every step."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgeprune.errors import InputError
from edgeprune.prune import StructuredConfig, UnstructuredConfig, prune, recover
from edgeprune.prune.recover import recalibrate_batchnorm
from tests.zoo import calibration, mobilenet, single_thread  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("single_thread")


def _distance(student, teacher, batches) -> float:
    with torch.no_grad():
        return sum(float((student(*b) - teacher(*b)).pow(2).mean()) for b in batches)


def _trained_like():
    """The MobileNet of the zoo with BatchNorm statistics that fit its inputs, as after training."""
    model, inputs = mobilenet()
    recalibrate_batchnorm(model, calibration(inputs, batches=8, batch=8, seed=5))
    return model.eval(), inputs


def test_batchnorm_recalibration_averages_the_statistics_of_the_data():
    bn = nn.BatchNorm2d(3)
    model = nn.Sequential(bn).eval()
    batches = [(torch.randn(4, 3, 5, 5) * 2 + 1,) for _ in range(3)]
    assert recalibrate_batchnorm(model, batches) == 1
    data = torch.cat([b[0] for b in batches])
    assert torch.allclose(bn.running_mean, data.mean((0, 2, 3)), atol=1e-5)
    assert bn.momentum == 0.1 and not model.training


def test_recovery_brings_unstructured_model_closer_and_keeps_its_zeros():
    model, inputs = _trained_like()
    data = calibration(inputs, batches=4, batch=4, seed=1)
    held_out = calibration(inputs, batches=2, batch=4, seed=2)
    result = prune(model, UnstructuredConfig(0.7), example_inputs=inputs)
    teacher_state = {k: v.clone() for k, v in model.state_dict().items()}
    before = _distance(result.model, model, held_out)
    info = recover(result.model, model, data, steps=20, masks=result.masks)
    assert info["steps"] == 20 and info["batchnorm_recalibrated"] == 14
    assert info["loss_last"] < info["loss_first"]
    assert _distance(result.model, model, held_out) < 0.5 * before
    params = dict(result.model.named_parameters())
    for name, mask in result.masks.items():
        assert torch.all(params[name][~mask] == 0), name
    assert not result.model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, teacher_state[k])


def test_recovery_of_a_structured_model():
    model, inputs = _trained_like()
    data = calibration(inputs, batches=4, batch=4, seed=1)
    held_out = calibration(inputs, batches=2, batch=4, seed=2)
    result = prune(model, StructuredConfig(0.5), example_inputs=inputs)
    before = _distance(result.model, model, held_out)
    recover(result.model, model, data, steps=20)
    assert _distance(result.model, model, held_out) < 0.5 * before


def test_recovery_needs_data():
    model, _ = mobilenet()
    with pytest.raises(InputError, match="finetune_data"):
        recover(model, model, None, steps=10)
    with pytest.raises(InputError, match=">= 0"):
        recover(model, model, None, steps=-1)
    assert recover(model, model, None, steps=0)["steps"] == 0
