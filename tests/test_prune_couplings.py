"""Channels followed through the ops that defeat Torch-Pruning's guesses (prune/trace.py).

Each small model here has one such op, as a real architecture has it: ShuffleNet's channel
shuffle, Swin's channels-last windows, patch merging and attention through F.linear,
MobileViT's unfolding, LeViT's and timm ViT's fused qkv split into heads, FastViT's depthwise
convolutions with a channel multiplier. Each is pruned
after planting (tests/planted.py): the pruned model must compute the planted one's function,
which a wrong coupling anywhere would change, and what cannot be followed is kept whole.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgeprune.prune import StructuredConfig, prune
from edgeprune.stats import count_macs
from tests.planted import plant
from tests.zoo import single_thread  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("single_thread")


def _conv_bn(cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout))


class ShuffleBlock(nn.Module):
    """ShuffleNetV2's unit: half the channels pass, half go through a branch, then they are shuffled."""

    def __init__(self, c: int) -> None:
        super().__init__()
        half = c // 2
        self.branch = nn.Sequential(_conv_bn(half, 2 * half), nn.ReLU(), _conv_bn(2 * half, 2 * half, 3, groups=2 * half),
                                    _conv_bn(2 * half, half), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=1)
        out = torch.cat([a, self.branch(b)], 1)
        n, c, h, w = out.shape
        return out.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(_conv_bn(3, 16, 3, 2), nn.ReLU())
        self.blocks = nn.Sequential(ShuffleBlock(16), ShuffleBlock(16))
        self.head = nn.Sequential(_conv_bn(16, 32), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


class FusedAttention(nn.Module):
    """LeViT's attention: one linear (and its BatchNorm) for q, k and v, split per head."""

    def __init__(self, dim: int, num_heads: int, key_dim: int, tokens: int) -> None:
        super().__init__()
        self.num_heads, self.key_dim, self.val_dim = num_heads, key_dim, 2 * key_dim
        self.val_attn_dim = num_heads * self.val_dim
        self.qkv = nn.Linear(dim, num_heads * (2 * key_dim + self.val_dim), bias=False)
        self.bn = nn.BatchNorm1d(self.qkv.out_features)
        self.attention_biases = nn.Parameter(torch.randn(num_heads, tokens))
        self.proj = nn.Linear(self.val_attn_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        qkv = self.qkv(x)
        qkv = self.bn(qkv.flatten(0, 1)).reshape_as(qkv)
        q, k, v = qkv.view(b, n, self.num_heads, -1).split([self.key_dim, self.key_dim, self.val_dim], dim=3)
        attn = q.permute(0, 2, 1, 3) @ k.permute(0, 2, 3, 1) * self.key_dim ** -0.5
        attn = (attn + self.attention_biases.unsqueeze(1)).softmax(-1)
        return self.proj((attn @ v.permute(0, 2, 1, 3)).transpose(1, 2).reshape(b, n, self.val_attn_dim))


class LeViTLike(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 4, 4)
        self.attn = nn.ModuleList([FusedAttention(32, 4, 8, 16) for _ in range(2)])
        self.mlp = nn.ModuleList([nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 32)) for _ in range(2)])
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x).flatten(2).transpose(1, 2)
        for attn, mlp in zip(self.attn, self.mlp, strict=True):
            x = x + attn(x)
            x = x + mlp(x)
        return self.head(x.mean(1))


class SelectorAttention(nn.Module):
    """timm's ViT attention: one linear for q, k and v, laid out (q/k/v, heads, width) and unbound."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.attn_dim = dim
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, self.attn_dim))


class ViTLike(LeViTLike):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.ModuleList([SelectorAttention(32, 4) for _ in range(2)])


class Stage(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.mix = _conv_bn(c, c, 3, groups=c)
        self.mlp = nn.Sequential(_conv_bn(c, 2 * c), nn.ReLU(), _conv_bn(2 * c, c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.mix(x)
        return x + self.mlp(x)


class Multiplied(nn.Module):
    """FastViT's downsampling: a depthwise convolution doubling the channels (groups = inputs)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(_conv_bn(3, 8, 3, 2), nn.ReLU())
        self.stages = nn.Sequential(Stage(8), _conv_bn(8, 16, 3, 2, groups=8), Stage(16),
                                    _conv_bn(16, 32, 3, 2, groups=16), Stage(32))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))


class Windows(nn.Module):
    """Swin's layout: channels last, split into windows and back, an MLP on each window's tokens,
    an attention-like mixing whose weight is read through F.linear, outside its layer, and the
    patch merging: four strided views of the stream joined along the channel."""

    def __init__(self, functional: bool = True) -> None:
        super().__init__()
        self.functional = functional
        self.stem = nn.Conv2d(3, 16, 4, 4)
        self.fc1, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 16)
        self.mix = nn.Linear(16, 16)
        self.reduction = nn.Linear(64, 24)
        self.head = nn.Linear(24, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x).permute(0, 2, 3, 1)
        b, h, w, c = x.shape
        windows = x.view(b, h // 2, 2, w // 2, 2, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, 4, c)
        windows = windows + self.fc2(F.gelu(self.fc1(windows)))
        if self.functional:
            windows = windows + F.linear(windows, self.mix.weight, self.mix.bias)
        x = windows.view(b, h // 2, w // 2, 2, 2, c).permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        return self.head(F.relu(self.reduction(x)).mean((1, 2)))


class Unfolded(nn.Module):
    """MobileViT's unfolding: the channel merged with spatial axes, then split out again to be a
    token's features; and a classifier reading the flattened channels, height and width."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(_conv_bn(3, 16, 3, 2), nn.ReLU())
        self.mlp = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 16))
        self.head = nn.Linear(16 * 64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        b, c, h, w = x.shape
        patches = x.reshape(b * c * 4, 2, 4, 2).transpose(1, 2).reshape(b, c, 16, 4).transpose(1, 3)
        patches = patches.reshape(b * 4, 16, c)
        patches = patches + self.mlp(patches)
        x = patches.reshape(b, 4, 16, c).transpose(1, 3).reshape(b * c * 4, 4, 2, 2).transpose(1, 2)
        return self.head(x.reshape(b, c, h, w).flatten(1))


MODELS = {"shuffle": ShuffleNet, "fused_heads": LeViTLike, "selected_heads": ViTLike, "multiplier": Multiplied,
          "windows": Windows, "merging": lambda: Windows(functional=False), "unfolded": Unfolded}


@pytest.mark.parametrize("arch", list(MODELS))
def test_pruning_planted_channels_through_the_op_computes_the_same_function(arch):
    torch.manual_seed(0)
    model = MODELS[arch]().eval()
    inputs = (torch.randn(1, 3, 16, 16),)
    planted, groups = plant(model, inputs, 0.5, ())
    assert groups >= 2
    result = prune(planted, StructuredConfig(0.5, "l2"), example_inputs=inputs)
    assert len(result.details["groups"]) == groups
    assert all(g["channels_after"] < g["channels"] for g in result.details["groups"])
    assert count_macs(result.model, inputs) < 0.8 * count_macs(planted, inputs)
    with torch.no_grad():
        x = torch.randn(4, 3, 16, 16)
        expected = planted(x)
        assert torch.allclose(result.model(x), expected, atol=1e-5 * float(expected.abs().max()))


def test_what_the_op_does_to_the_channel_decides_the_unit_or_keeps_it_whole():
    torch.manual_seed(0)
    inputs = (torch.randn(1, 3, 16, 16),)
    kept = {arch: " ".join(k["reason"] for k in prune(MODELS[arch]().eval(), StructuredConfig(0.5),
                                                      example_inputs=inputs).details["kept_whole"])
            for arch in ("shuffle", "windows")}
    assert "a reshape in blocks.0 reorders or hides its channels" in kept["shuffle"]  # the shuffle
    assert "the weight of mix is used outside its layer" in kept["windows"]
    for fused in (ViTLike, LeViTLike):
        levit = prune(fused().eval(), StructuredConfig(0.5), example_inputs=inputs)
        heads = [g for g in levit.details["groups"] if g["unit"] == "head"]
        assert [(g["attention"], g["heads"], g["heads_after"]) for g in heads] == [("attn.0", 4, 2), ("attn.1", 4, 2)]
    attn = levit.model.attn[0]
    assert (attn.num_heads, attn.val_attn_dim, attn.qkv.out_features, tuple(attn.attention_biases.shape)) == \
        (2, 32, 64, (2, 16))
    merging = prune(Windows(functional=False).eval(), StructuredConfig(0.5), example_inputs=inputs).model
    assert (merging.stem.out_channels, merging.reduction.in_features) == (8, 32)  # the stream, four times
    multiplied = prune(Multiplied().eval(), StructuredConfig(0.5), example_inputs=inputs).model
    down = multiplied.stages[1][0]
    assert (down.in_channels, down.groups, down.out_channels) == (4, 4, 8)
