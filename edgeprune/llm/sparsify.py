"""Unstructured and N:M sparsity of decoder projections by magnitude or Wanda scores."""

from __future__ import annotations

import torch

from edgeprune.errors import InputError


def magnitude_scores(weight: torch.Tensor) -> torch.Tensor:
    """Returns |W|, the importance of each weight by magnitude alone."""
    return weight.abs()


def wanda_scores(weight: torch.Tensor, input_norms: torch.Tensor) -> torch.Tensor:
    """Returns the Wanda score |W_ij| * ||X_j||_2 of each weight of an (out, in) matrix."""
    return weight.abs() * input_norms.to(weight.dtype).unsqueeze(0)


def unstructured_mask(scores: torch.Tensor, sparsity: float, per_row: bool) -> torch.Tensor:
    """Returns the keep-mask that drops the ``sparsity`` fraction of lowest scores.

    Wanda compares weights within each output row (``per_row``); magnitude pruning, as
    published, compares them across the whole matrix.
    """
    if per_row:
        drop = int(scores.shape[1] * sparsity)
        keep = torch.ones_like(scores, dtype=torch.bool)
        if drop:
            lowest = torch.topk(scores, drop, dim=1, largest=False).indices
            keep.scatter_(1, lowest, False)
        return keep
    drop = int(scores.numel() * sparsity)
    keep = torch.ones(scores.numel(), dtype=torch.bool, device=scores.device)
    if drop:
        keep[torch.topk(scores.flatten(), drop, largest=False).indices] = False
    return keep.view_as(scores)


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Returns the keep-mask holding the ``n`` highest scores in every ``m`` consecutive inputs."""
    rows, cols = scores.shape
    if cols % m:
        raise InputError(f"{n}:{m} sparsity needs input features divisible by {m}, got {cols}")
    blocks = scores.reshape(rows, cols // m, m)
    keep = torch.zeros_like(blocks, dtype=torch.bool)
    keep.scatter_(2, torch.topk(blocks, n, dim=2).indices, True)
    return keep.reshape(rows, cols)


def sparsify_(
    weight: torch.Tensor,
    scores: torch.Tensor,
    sparsity: float,
    nm: tuple[int, int] | None,
    per_row: bool,
) -> None:
    """Zeroes the pruned weights in place (``weight`` may be a transposed view of a parameter)."""
    keep = nm_mask(scores, *nm) if nm else unstructured_mask(scores, sparsity, per_row)
    weight.masked_fill_(~keep, 0)
