"""Statistics of calibration data that activation-aware and gradient-based criteria read."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

Batch = Sequence[torch.Tensor]


class InputStats:
    """Running statistics of one projection's input over the calibration tokens.

    ``gram`` keeps X^T X (features x features), which least-squares restoration and the
    SparseGPT update need; otherwise only the per-feature sums of squares are kept (Wanda).
    """

    def __init__(self, features: int, gram: bool) -> None:
        self.features = features
        self.tokens = 0
        self.sum_sq = torch.zeros(features)
        self.gram = torch.zeros(features, features) if gram else None

    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, self.features).float()
        self.tokens += x.shape[0]
        if self.gram is not None:
            self.gram.addmm_(x.t(), x)
        else:
            self.sum_sq += (x * x).sum(0)

    def norms(self) -> torch.Tensor:
        """Returns ||X_j||_2 of each input feature over all calibration tokens."""
        sum_sq = torch.diagonal(self.gram) if self.gram is not None else self.sum_sq
        return sum_sq.clamp_min(0).sqrt()


def input_norms(model: nn.Module, calibration: Iterable[Batch], layers: Iterable[nn.Module]) -> dict[nn.Module, torch.Tensor]:
    """Returns, for each layer, the L2 norm of every input channel over all calibration tokens.

    For a linear that is ||X_j||_2 over every row of its input; for a convolution, over the
    batch and all spatial positions of input channel j (Wanda's ||X_j||).
    """
    stats: dict[nn.Module, InputStats] = {}

    def hook(module, args, _output):
        x = args[0].detach()
        if isinstance(module, nn.modules.conv._ConvNd):
            x = x.movedim(1, -1)  # channels last: every position of channel j is a row of feature j
        stats.setdefault(module, InputStats(x.shape[-1], gram=False)).add(x)

    handles = [m.register_forward_hook(hook) for m in set(layers)]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in calibration:
                model(*batch)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return {m: s.norms() for m, s in stats.items()}


def _pseudo_label_loss(output) -> torch.Tensor:
    """Returns a label-free loss: cross-entropy against the model's own predictions.

    Logits are read along dim 1, or along the last dim of a 3-D (batch, tokens, classes)
    output; a single-channel output falls back to half its squared norm.
    """
    if isinstance(output, (tuple, list)):
        output = output[0]
    if isinstance(output, dict):
        output = next(iter(output.values()))
    out = output.float()
    dim = -1 if out.dim() == 3 else 1
    if out.dim() < 2 or out.shape[dim] < 2:
        return 0.5 * out.pow(2).sum()
    logits = out.movedim(dim, -1).reshape(-1, out.shape[dim])
    return F.cross_entropy(logits, logits.argmax(-1).detach(), reduction="sum")


def taylor_gradients(model: nn.Module, calibration: Iterable[Batch]) -> dict[nn.Parameter, torch.Tensor]:
    """Returns dL/dw for every parameter, summed over the calibration batches, with L the
    cross-entropy against the model's own predictions (no labels needed)."""
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    saved = [p.grad for p in params]
    was_training = model.training
    model.eval()
    try:
        for p in params:
            p.requires_grad_(True)
            p.grad = None
        with torch.enable_grad():
            for batch in calibration:
                _pseudo_label_loss(model(*batch)).backward()
        return {p: p.grad.detach().clone() for p in params if p.grad is not None}
    finally:
        for p, flag, grad in zip(params, flags, saved, strict=True):
            p.grad = grad
            p.requires_grad_(flag)
        model.train(was_training)
