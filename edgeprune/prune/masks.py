"""Sparsity masks: parameter name -> bool tensor (True keeps the weight), applied in place."""

from __future__ import annotations

import torch
from torch import nn

Masks = dict[str, torch.Tensor]


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
