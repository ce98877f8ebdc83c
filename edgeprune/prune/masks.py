"""Sparsity masks: parameter name -> bool tensor (True keeps the weight), how they are chosen, applied in place.

The one place the keep-masks of unstructured and N:M sparsity and the Wanda score are
computed, for the general engines (prune/) and the block-wise causal-LM pruner (llm/) alike.
"""

from __future__ import annotations

import torch
from torch import nn

from edgeprune.errors import InputError

Masks = dict[str, torch.Tensor]


def wanda_scores(weight: torch.Tensor, input_scale: torch.Tensor) -> torch.Tensor:
    """Returns the Wanda score |W_ij| * ||X_j||_2 of each weight; ``input_scale`` is ||X|| shaped to broadcast."""
    return weight.abs() * input_scale.to(weight.dtype)


def drop_lowest(scores: torch.Tensor, count: int, per_row: bool = False) -> torch.Tensor:
    """Returns the keep-mask with the ``count`` lowest scores dropped: over the whole tensor, or in every row."""
    if per_row:
        keep = torch.ones_like(scores, dtype=torch.bool)
        if count:
            keep.scatter_(1, torch.topk(scores, count, dim=1, largest=False).indices, False)
        return keep
    keep = torch.ones(scores.numel(), dtype=torch.bool, device=scores.device)
    if count > 0:
        keep[torch.topk(scores.reshape(-1), count, largest=False).indices] = False
    return keep.view(scores.shape)


def keep_n_of_m(scores: torch.Tensor, n: int, m: int, dim: int = -1) -> torch.Tensor:
    """Returns the keep-mask holding the ``n`` highest scores in every ``m`` consecutive entries along ``dim``."""
    moved = scores.movedim(dim, -1)
    if moved.shape[-1] % m:
        raise InputError(f"{n}:{m} sparsity needs input features divisible by {m}, got {moved.shape[-1]}")
    blocks = moved.reshape(-1, m)
    keep = torch.zeros_like(blocks, dtype=torch.bool)
    keep.scatter_(1, torch.topk(blocks, n, dim=1).indices, True)
    return keep.view(moved.shape).movedim(-1, dim)


def apply_masks(model: nn.Module, masks: Masks) -> None:
    """Zeroes every masked-out weight of the model in place."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, mask in masks.items():
            params[name].mul_(mask.to(params[name].dtype))


def mask_gradients(model: nn.Module, masks: Masks) -> None:
    """Zeroes the gradients of masked-out weights, so an optimizer step cannot revive them."""
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        grad = params[name].grad
        if grad is not None:
            grad.mul_(mask.to(grad.dtype))


def sparsity(masks: Masks) -> float:
    """Returns the fraction of masked-out weights over all masks."""
    total = sum(m.numel() for m in masks.values())
    return 1.0 - sum(int(m.sum()) for m in masks.values()) / total if total else 0.0
