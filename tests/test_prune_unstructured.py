"""Unstructured sparsity: exact per-layer and global magnitude, Wanda, and what stays dense."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgeprune.errors import InputError
from edgeprune.prune import UnstructuredConfig, prune
from tests.zoo import calibration, gpt, mobilenet, single_thread  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("single_thread")


class Scaled(nn.Module):
    """Two linears and a classifier; input feature 0 is always 100x larger than the rest."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = nn.Linear(16, 32)
        self.fc2 = nn.Linear(32, 32)
        self.out = nn.Linear(32, 4)
        with torch.no_grad():
            self.fc1.weight[:, 0] = 0.01    # small weights on the loud input

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def _loud_batches() -> list[tuple[torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(4):
        x = torch.randn(32, 16, generator=gen)
        x[:, 0] *= 100
        batches.append((x,))
    return batches


def test_layer_scope_gives_every_layer_the_exact_sparsity_by_magnitude():
    model, inputs = mobilenet()
    result = prune(model, UnstructuredConfig(0.5), example_inputs=inputs)
    params = dict(result.model.named_parameters())
    assert len(result.masks) >= 10
    for name, mask in result.masks.items():
        w = params[name].detach()
        assert int((~mask).sum()) == round(0.5 * mask.numel())
        assert torch.all(w[~mask] == 0)
        original = dict(model.named_parameters())[name].detach().abs()
        assert float(original[~mask].max()) <= float(original[mask].min())
    assert result.details["sparsity"] == pytest.approx(0.5, abs=0.01)


def test_global_scope_uses_one_threshold_across_layers():
    model, inputs = mobilenet()
    result = prune(model, UnstructuredConfig(0.7, scope="global"), example_inputs=inputs)
    originals = dict(model.named_parameters())
    removed = torch.cat([originals[n].detach().abs()[~m] for n, m in result.masks.items()])
    kept = torch.cat([originals[n].detach().abs()[m] for n, m in result.masks.items()])
    assert float(removed.max()) <= float(kept.min())
    assert result.details["sparsity"] == pytest.approx(0.7, abs=1e-3)
    per_layer = [layer["sparsity"] for layer in result.details["layers"]]
    assert max(per_layer) - min(per_layer) > 0.2  # global: layers end up different


def test_wanda_keeps_small_weights_on_loud_inputs_and_prunes_each_row_exactly():
    model = Scaled().eval()
    data = _loud_batches()
    magnitude = prune(model, UnstructuredConfig(0.5), data, data[0]).masks["fc1.weight"]
    wanda = prune(model, UnstructuredConfig(0.5, "wanda"), data, data[0]).masks["fc1.weight"]
    assert magnitude[:, 0].sum() == 0            # magnitude drops the small weights
    assert wanda[:, 0].all()                     # Wanda keeps them: |W| * ||X|| is large
    assert torch.all((~wanda).sum(1) == 8)       # half of every output row
    with torch.no_grad():  # the layer's output error, which Wanda's score estimates, is smaller
        x = data[0][0]
        dense = model.fc1(x)
        err = {k: float((prune(model, UnstructuredConfig(0.5, k), data, data[0]).model.fc1(x) - dense).norm())
               for k in ("magnitude", "wanda")}
    assert err["wanda"] < 0.5 * err["magnitude"]


def test_embeddings_and_classifier_stay_dense_unless_included():
    model, inputs = gpt()
    result = prune(model, UnstructuredConfig(0.5), example_inputs=inputs)
    dense = {d["name"]: d["reason"] for d in result.details["left_dense"]}
    assert set(dense) == {"tok_emb.weight", "pos_emb.weight"}
    assert "tok_emb.weight" not in result.masks and int((result.model.tok_emb.weight == 0).sum()) == 0
    assert result.model.lm_head.weight is result.model.tok_emb.weight
    everything = prune(model, UnstructuredConfig(0.5, include_embeddings=True, include_classifier=True),
                        example_inputs=inputs)
    assert {"tok_emb.weight", "pos_emb.weight"} <= set(everything.masks)
    assert float((everything.model.lm_head.weight == 0).float().mean()) == pytest.approx(0.5, abs=0.01)


def test_wanda_without_calibration_is_a_clear_error():
    model, inputs = mobilenet()
    with pytest.raises(InputError, match="wanda needs calibration data"):
        prune(model, UnstructuredConfig(0.5, "wanda"), None, inputs)


def test_wanda_on_convolutions_scores_per_input_channel():
    model, inputs = mobilenet()
    result = prune(model, UnstructuredConfig(0.5, "wanda"), calibration(inputs), inputs)
    mask = result.masks["blocks.0.block.4.0.weight"]          # 1x1 projection conv, 64 -> 24
    rows = mask.reshape(mask.shape[0], -1)
    assert torch.all((~rows).sum(1) == 32)
