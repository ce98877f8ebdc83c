"""N:M sparsity: exact blocks along the input dimension, and layers a sparse kernel cannot take."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgeprune.prune import NMConfig, prune
from tests.zoo import calibration, single_thread  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("single_thread")


class Shapes(nn.Module):
    """Layers whose shapes a 2:4 kernel can and cannot take."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 32, 3, padding=1)          # 3 inputs: dense
        self.conv = nn.Conv2d(32, 64, 3, padding=1)         # sparse
        self.dw = nn.Conv2d(64, 64, 3, padding=1, groups=64)  # 1 input per group: dense
        self.grouped = nn.Conv2d(64, 64, 1, groups=2)       # 32 inputs per group: sparse
        self.fc = nn.Linear(64, 20)                         # 20 outputs: dense
        self.fc2 = nn.Linear(20, 16)                        # 20 inputs: dense
        self.fc3 = nn.Linear(16, 64)                        # sparse
        self.head = nn.Linear(64, 10)                       # classifier: dense

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.grouped(self.dw(self.conv(self.stem(x)))).mean((2, 3))
        return self.head(self.fc3(self.fc2(self.fc(x))))


def _blocks_along_inputs(weight: torch.Tensor, m: int) -> torch.Tensor:
    """Returns the non-zero count of every block of m input channels (at each kernel position)."""
    moved = weight.movedim(1, -1) if weight.dim() > 2 else weight
    return (moved.reshape(-1, m) != 0).sum(1)


@pytest.mark.parametrize(("n", "m"), [(2, 4), (1, 4), (4, 8)])
def test_every_block_of_m_inputs_keeps_exactly_n(n, m):
    model, inputs = Shapes().eval(), (torch.randn(1, 3, 8, 8),)
    result = prune(model, NMConfig(n, m), example_inputs=inputs)
    assert sorted(result.masks) == ["conv.weight", "fc3.weight", "grouped.weight"]
    params = dict(result.model.named_parameters())
    for name in result.masks:
        counts = _blocks_along_inputs(params[name].detach(), m)
        assert torch.all(counts == n), name


def test_layers_a_sparse_kernel_cannot_take_are_left_dense_with_the_reason():
    model, inputs = Shapes().eval(), (torch.randn(1, 3, 8, 8),)
    result = prune(model, NMConfig(), example_inputs=inputs)
    reasons = {d["name"]: d["reason"] for d in result.details["left_dense"]}
    assert reasons == {
        "stem.weight": "input width 3 is not a multiple of 16",
        "dw.weight": "input width 1 is not a multiple of 16",
        "fc.weight": "output width 20 is not a multiple of 8",
        "fc2.weight": "input width 20 is not a multiple of 16",
        "head.weight": "output layer (kept dense by default)",
    }
    assert int((result.model.stem.weight == 0).sum()) == 0
    small = prune(model, NMConfig(min_channels=32), example_inputs=inputs)
    assert sorted(small.masks) == ["conv.weight", "grouped.weight"]
    reasons = {d["name"]: d["reason"] for d in small.details["left_dense"]}
    assert reasons["fc3.weight"] == "width 16 is below the profile's minimum of 32 for N:M"


def test_wanda_nm_uses_activations():
    model, inputs = Shapes().eval(), (torch.randn(1, 3, 8, 8),)
    data = calibration(inputs)
    scale = torch.ones(32)
    scale[::4] = 1e3                       # one loud channel in every block of four
    with torch.no_grad():
        model.stem.weight.mul_(scale.view(-1, 1, 1, 1))
        model.stem.bias.mul_(scale)
        model.conv.weight[:, ::4] = 0.01   # small weights on the loud channels
    magnitude = prune(model, NMConfig(), data, inputs).masks["conv.weight"]
    wanda = prune(model, NMConfig(criterion="wanda"), data, inputs).masks["conv.weight"]
    assert wanda[:, ::4].all()
    assert not magnitude[:, ::4].all()
