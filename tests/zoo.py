"""Small hand-written models covering the architectures structured pruning must get right.

Each builder returns ``(model, example_inputs)`` with seeded random weights, in eval mode.
The models are tiny so that pruning, export and ONNX Runtime checks stay fast, but each one
keeps the coupling that breaks naive pruners: residual adds, grouped and depthwise
convolutions, concatenated skips, transposed convolutions, nn.MultiheadAttention, hand-written
causal attention and tied input/output embeddings.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

Inputs = tuple[torch.Tensor, ...]


def _conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)
    )


class BasicBlock(nn.Module):
    """ResNet basic block; ``groups`` > 1 makes the second conv grouped (ResNeXt-style)."""

    def __init__(self, cin: int, cout: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv_bn(cin, cout, 3, stride)
        self.conv2 = _conv_bn(cout, cout, 3, 1, groups)
        self.shortcut = _conv_bn(cin, cout, 1, stride) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv2(F.relu(self.conv1(x))) + self.shortcut(x))


class ResNetish(nn.Module):
    """Three stages of basic blocks, a grouped conv, strided shortcuts, global pooling, a classifier."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(_conv_bn(3, 16), nn.ReLU())
        self.layer1 = nn.Sequential(BasicBlock(16, 16), BasicBlock(16, 16))
        self.layer2 = nn.Sequential(BasicBlock(16, 32, stride=2), BasicBlock(32, 32, groups=4))
        self.layer3 = nn.Sequential(BasicBlock(32, 64, stride=2))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, 1x1 linear projection, residual if shapes allow."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_residual = stride == 1 and cin == cout
        self.block = nn.Sequential(
            _conv_bn(cin, hidden, 1), nn.ReLU6(),
            _conv_bn(hidden, hidden, 3, stride, groups=hidden), nn.ReLU6(),
            _conv_bn(hidden, cout, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.use_residual else out


class MobileNetV2ish(nn.Module):
    """Stem, four inverted residual blocks (two with residuals), 1x1 head conv, pooling, classifier."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(_conv_bn(3, 16), nn.ReLU6())
        self.blocks = nn.Sequential(
            InvertedResidual(16, 24, 2, 4), InvertedResidual(24, 24, 1, 4),
            InvertedResidual(24, 32, 2, 4), InvertedResidual(32, 32, 1, 4),
        )
        self.head = nn.Sequential(_conv_bn(32, 128, 1), nn.ReLU6())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(128, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.classifier(self.pool(x).flatten(1))


class DoubleConv(nn.Sequential):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(_conv_bn(cin, cout), nn.ReLU(), _conv_bn(cout, cout), nn.ReLU())


class UNetish(nn.Module):
    """Two-level U-Net: max-pool encoder, transposed-conv decoder, concatenated skips."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.enc1 = DoubleConv(3, 16)
        self.enc2 = DoubleConv(16, 32)
        self.bottleneck = DoubleConv(32, 64)
        self.up2 = nn.ConvTranspose2d(64, 32, 2, stride=2)
        self.dec2 = DoubleConv(64, 32)
        self.up1 = nn.ConvTranspose2d(32, 16, 2, stride=2)
        self.dec1 = DoubleConv(32, 16)
        self.out = nn.Conv2d(16, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s1 = self.enc1(x)
        s2 = self.enc2(F.max_pool2d(s1, 2))
        b = self.bottleneck(F.max_pool2d(s2, 2))
        d2 = self.dec2(torch.cat([self.up2(b), s2], dim=1))
        d1 = self.dec1(torch.cat([self.up1(d2), s1], dim=1))
        return self.out(d1)


class ViTBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, mlp)
        self.fc2 = nn.Linear(mlp, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class ViTish(nn.Module):
    """Patch embedding, class token, learned positions, nn.MultiheadAttention blocks, linear head."""

    def __init__(self, image: int = 32, patch: int = 8, dim: int = 64, depth: int = 2,
                 heads: int = 4, mlp: int = 256, classes: int = 10) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, patch, stride=patch)
        tokens = (image // patch) ** 2 + 1
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, tokens, dim) * 0.02)
        self.blocks = nn.Sequential(*[ViTBlock(dim, heads, mlp) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return self.head(self.norm(self.blocks(x))[:, 0])


class CausalSelfAttention(nn.Module):
    """Hand-written causal attention through scaled_dot_product_attention; the head count is an attribute."""

    def __init__(self, dim: int, n_head: int) -> None:
        super().__init__()
        self.n_head = n_head
        self.head_dim = dim // n_head
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape

        def heads(y: torch.Tensor) -> torch.Tensor:
            return y.view(b, t, self.n_head, self.head_dim).transpose(1, 2)

        y = F.scaled_dot_product_attention(heads(self.q(x)), heads(self.k(x)), heads(self.v(x)), is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(b, t, self.n_head * self.head_dim))


class GPTBlock(nn.Module):
    def __init__(self, dim: int, n_head: int, mlp: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, n_head)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.GELU(), nn.Linear(mlp, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPTish(nn.Module):
    """Decoder-only LM: token and position embeddings, causal blocks, LM head tied to the token embedding."""

    def __init__(self, vocab: int = 64, dim: int = 64, depth: int = 2, n_head: int = 4,
                 mlp: int = 256, context: int = 16) -> None:
        super().__init__()
        self.tok_emb = nn.Embedding(vocab, dim)
        self.pos_emb = nn.Embedding(context, dim)
        self.blocks = nn.Sequential(*[GPTBlock(dim, n_head, mlp) for _ in range(depth)])
        self.ln_f = nn.LayerNorm(dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        self.lm_head.weight = self.tok_emb.weight

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.tok_emb(idx) + self.pos_emb(pos)
        return self.lm_head(self.ln_f(self.blocks(x)))


def _randomize_norms(model: nn.Module) -> nn.Module:
    """Gives BatchNorm layers non-trivial statistics so BN-scale scores and folding are exercised."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.2, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model


def resnet() -> tuple[nn.Module, Inputs]:
    torch.manual_seed(0)
    return _randomize_norms(ResNetish()).eval(), (torch.randn(1, 3, 32, 32),)


def mobilenet() -> tuple[nn.Module, Inputs]:
    torch.manual_seed(1)
    return _randomize_norms(MobileNetV2ish()).eval(), (torch.randn(1, 3, 32, 32),)


def unet() -> tuple[nn.Module, Inputs]:
    torch.manual_seed(2)
    return _randomize_norms(UNetish()).eval(), (torch.randn(1, 3, 32, 32),)


def vit() -> tuple[nn.Module, Inputs]:
    torch.manual_seed(3)
    return ViTish().eval(), (torch.randn(1, 3, 32, 32),)


def gpt() -> tuple[nn.Module, Inputs]:
    torch.manual_seed(4)
    return GPTish().eval(), (torch.randint(0, 64, (1, 16)),)


ZOO: dict[str, Callable[[], tuple[nn.Module, Inputs]]] = {
    "resnet": resnet,
    "mobilenet": mobilenet,
    "unet": unet,
    "vit": vit,
    "gpt": gpt,
}


def calibration(example_inputs: Inputs, batches: int = 4, batch: int = 4, seed: int = 0) -> list[Inputs]:
    """Returns random batches shaped like the example inputs (token ids stay in range)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(batches):
        items = []
        for t in example_inputs:
            shape = (batch, *t.shape[1:])
            if t.dtype in (torch.int64, torch.int32):
                items.append(torch.randint(0, int(t.max()) + 1, shape, generator=gen, dtype=t.dtype))
            else:
                items.append(torch.randn(shape, generator=gen))
        out.append(tuple(items))
    return out


@pytest.fixture
def single_thread():
    """Runs a test on one intra-op thread: on a shared two-core machine, a second OpenMP
    thread mostly spins waiting for a core, making runs several times slower and erratic."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
