"""Removing output rows or input columns of a projection (nn.Linear or GPT-2's Conv1D)."""

from __future__ import annotations

import torch
from torch import nn

from edgeprune.llm.blocks import is_conv1d


def keep_outputs_(module: nn.Module, index: torch.Tensor) -> None:
    """Keeps only the output features in ``index`` (rows of the (out, in) weight), in place."""
    weight = module.weight.detach()
    if is_conv1d(module):
        module.weight = nn.Parameter(weight[:, index].contiguous())
        module.nf = len(index)
    else:
        module.weight = nn.Parameter(weight[index].contiguous())
        module.out_features = len(index)
    if module.bias is not None:
        module.bias = nn.Parameter(module.bias.detach()[index].contiguous())


def keep_inputs_(module: nn.Module, index: torch.Tensor, weight: torch.Tensor | None = None) -> None:
    """Keeps only the input features in ``index`` (columns of the (out, in) weight), in place.

    ``weight``, if given, is the new (out, len(index)) matrix, e.g. restored by least squares.
    """
    old = module.weight.detach()
    if weight is None:
        weight = (old.t() if is_conv1d(module) else old)[:, index]
    weight = weight.to(old.dtype)
    if is_conv1d(module):
        module.weight = nn.Parameter(weight.t().contiguous())
        module.nx = len(index)
    else:
        module.weight = nn.Parameter(weight.contiguous())
        module.in_features = len(index)
