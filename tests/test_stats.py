"""Parameter, non-zero and MAC counts checked against hand-computed values."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgeprune.stats import count_macs, count_nonzero_params, count_params, model_stats
from tests.zoo import gpt


class Mixed(nn.Module):
    """One of each operator the MAC counter must see: conv, depthwise, transposed conv,
    linear on tokens, matmul, hand-written attention and nn.MultiheadAttention."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)            # 8x8 output
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.up = nn.ConvTranspose2d(8, 4, 2, stride=2)       # 16x16 output
        self.proj = nn.Linear(4, 16)
        self.mha = nn.MultiheadAttention(16, 4, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.up(self.dw(self.conv(x)))                    # (1, 4, 16, 16)
        t = self.proj(x.flatten(2).transpose(1, 2)[:, :8])    # 8 tokens of width 16
        q = t.view(1, 8, 4, 4).transpose(1, 2)
        a = F.scaled_dot_product_attention(q, q, q)
        s = t @ t.transpose(1, 2)                             # (1, 8, 8)
        return self.mha(t, t, t, need_weights=False)[0].sum() + a.sum() + s.sum()


def test_count_macs_matches_hand_count():
    conv = 3 * 8 * 9 * 64
    dw = 8 * 9 * 64
    up = 8 * 4 * 4 * 64                     # each input pixel writes a 2x2 patch per output channel
    proj = 8 * 4 * 16
    sdpa = 2 * (4 * 8 * 8 * 4)              # q @ k^T and p @ v, 4 heads of width 4
    matmul = 8 * 8 * 16
    mha = 4 * (8 * 16 * 16) + 2 * (4 * 8 * 8 * 4)
    expected = conv + dw + up + proj + sdpa + matmul + mha
    model = Mixed().eval()
    assert count_macs(model, (torch.randn(1, 3, 8, 8),)) == expected
    with torch.no_grad():  # the fused inference kernel of nn.MultiheadAttention is avoided
        assert count_macs(model, (torch.randn(1, 3, 8, 8),)) == expected


def test_tied_weights_count_once_and_zeros_are_not_counted():
    model, inputs = gpt()
    unique = {id(p): p.numel() for m in model.modules() for p in m.parameters(recurse=False)}
    assert count_params(model) == sum(unique.values())
    assert count_params(model) < sum(p.numel() for m in model.modules() for p in m.parameters(recurse=False))
    before = count_nonzero_params(model)
    with torch.no_grad():
        model.lm_head.weight[:10].zero_()   # tied: the embedding loses the same 640 values
    assert count_nonzero_params(model) == before - 640
    stats = model_stats(model, inputs)
    assert stats == {"params": count_params(model), "nonzero_params": before - 640,
                     "macs": count_macs(model, inputs)}
    assert stats["macs"] > 0
