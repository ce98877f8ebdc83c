"""Recovery by distillation: the pruned model moves back toward the dense one, masks hold."""

from __future__ import annotations

import pytest
import torch

from edgeprune.errors import InputError
from edgeprune.prune import StructuredConfig, UnstructuredConfig, prune_, recover
from tests.zoo import calibration, mobilenet, single_thread  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("single_thread")


def _distance(student, teacher, batches) -> float:
    with torch.no_grad():
        return sum(float((student(*b) - teacher(*b)).pow(2).mean()) for b in batches)


def test_recovery_brings_unstructured_model_closer_and_keeps_its_zeros():
    model, inputs = mobilenet()
    data = calibration(inputs, batches=4, batch=4, seed=1)
    held_out = calibration(inputs, batches=2, batch=4, seed=2)
    result = prune_(model, UnstructuredConfig(0.7), example_inputs=inputs)
    teacher_state = {k: v.clone() for k, v in model.state_dict().items()}
    before = _distance(result.model, model, held_out)
    info = recover(result.model, model, data, steps=25, masks=result.masks, lr=1e-3)
    assert info["steps"] == 25 and info["loss_last"] < info["loss_first"]
    assert _distance(result.model, model, held_out) < 0.8 * before
    params = dict(result.model.named_parameters())
    for name, mask in result.masks.items():
        assert torch.all(params[name][~mask] == 0), name
    assert not result.model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, teacher_state[k])


def test_recovery_of_a_structured_model():
    model, inputs = mobilenet()
    data = calibration(inputs, batches=4, batch=4, seed=1)
    result = prune_(model, StructuredConfig(0.5), example_inputs=inputs)
    before = _distance(result.model, model, data)
    recover(result.model, model, data, steps=20, lr=1e-3)
    assert _distance(result.model, model, data) < before


def test_recovery_needs_data():
    model, inputs = mobilenet()
    with pytest.raises(InputError, match="finetune_data"):
        recover(model, model, None, steps=10)
    assert recover(model, model, None, steps=0)["steps"] == 0
