"""Models the backend tests lower: the digits workload, a small trained ViT, magnitude masks.

Each builder is cached, so a test session trains and loads every model once.
"""

from __future__ import annotations

import copy
import sys
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

import edgeprune

from conftest import ROOT

sys.path.insert(0, str(ROOT / "examples"))
import digits_cnn  # noqa: E402

VIT_WEIGHTS = ROOT / "tests" / "weights" / "tiny_vit.pt"


@lru_cache(maxsize=1)
def digits() -> edgeprune.Workload:
    """Returns the digits CNN workload (the real example)."""
    return edgeprune.load_workload(str(ROOT / "examples" / "digits_cnn.py"))


class Attention(nn.Module):
    """Multi-head self-attention written out: qkv projection, softmax(QK^T/sqrt(d))V, projection."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, dim = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        weights = torch.softmax((q @ k.transpose(-2, -1)) * self.head_dim**-0.5, dim=-1)
        return self.proj((weights @ v).transpose(1, 2).reshape(b, n, dim))


class Block(nn.Module):
    """Pre-norm transformer encoder block."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    """A ViT for the 32x32 digits: 2x2 average pool, 4x4 patches (16 tokens + class token)."""

    def __init__(self, dim: int = 64, depth: int = 2, heads: int = 4, classes: int = 10) -> None:
        super().__init__()
        self.embed = nn.Conv2d(1, dim, kernel_size=4, stride=4)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, 17, dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(F.avg_pool2d(x, 2)).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(x.shape[0], -1, -1), tokens], dim=1) + self.pos
        return self.head(self.norm(self.blocks(tokens))[:, 0])


def train_vit(epochs: int = 20, seed: int = 0) -> TinyViT:
    """Returns a TinyViT trained on the digits training split (deterministic for a seed)."""
    torch.manual_seed(seed)
    x, y, _, _ = digits_cnn.load_digits_split()
    model = TinyViT()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    steps = epochs * ((len(x) + 63) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x))
        for i in range(0, len(x), 64):
            batch = order[i : i + 64]
            loss = F.cross_entropy(model(x[batch]), y[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


@lru_cache(maxsize=1)
def vit() -> edgeprune.Workload:
    """Returns a workload of a TinyViT trained on the digits.

    The weights ship in tests/weights/tiny_vit.pt (fp16); training them again takes minutes
    on two cores, so a missing file is trained once and cached there.
    """
    model = TinyViT()
    if not VIT_WEIGHTS.exists():
        trained = train_vit()
        VIT_WEIGHTS.parent.mkdir(parents=True, exist_ok=True)
        torch.save({k: v.half() for k, v in trained.state_dict().items()}, VIT_WEIGHTS)
    state = torch.load(VIT_WEIGHTS, map_location="cpu", weights_only=True)
    model.load_state_dict({k: v.float() for k, v in state.items()})
    model.eval()
    _, _, x_test, y_test = digits_cnn.load_digits_split()
    x = digits_cnn.load_digits_split()[0]
    return edgeprune.Workload(
        model=model, example_inputs=(x_test[:1],),
        calibration=[(x[i : i + 16],) for i in range(0, 256, 16)],
        evaluate=lambda predict: digits_cnn.accuracy(predict, x_test, y_test),
        name="tiny_vit",
    )


def few(workload: edgeprune.Workload, batches: int = 4) -> list[tuple[torch.Tensor, ...]]:
    """Returns the first calibration batches (64 samples): enough to verify, quick to run."""
    return workload.calibration_batches()[:batches]


@lru_cache(maxsize=4)
def torch_accuracy(name: str) -> float:
    """Returns the PyTorch model's test accuracy for 'digits' or 'vit' (computed once)."""
    workload = digits() if name == "digits" else vit()
    with torch.no_grad():
        return float(workload.evaluate(workload.model))


def magnitude_prune(model: nn.Module, sparsity: float, nm: tuple[int, int] | None = None) -> nn.Module:
    """Returns a copy whose Conv/Linear weights keep only their largest magnitudes.

    Unstructured: the smallest ``sparsity`` fraction of each weight is zeroed. N:M: in
    every block of M consecutive input weights, only the N largest survive.
    """
    pruned = copy.deepcopy(model)
    with torch.no_grad():
        for module in pruned.modules():
            if not isinstance(module, (nn.Conv2d, nn.Linear)) or module.weight.shape[1] < 4:
                continue
            w = module.weight
            if nm is not None:
                n, m = nm
                flat = w.reshape(w.shape[0], -1)
                if flat.shape[1] % m:
                    continue
                blocks = flat.abs().reshape(flat.shape[0], -1, m)
                keep = torch.zeros_like(blocks, dtype=torch.bool).scatter_(2, blocks.topk(n, dim=2).indices, True)
                w.mul_(keep.reshape(w.shape))
            else:
                k = int(w.numel() * sparsity)
                threshold = w.abs().flatten().kthvalue(k).values
                w.mul_(w.abs() > threshold)
    return pruned.eval()
