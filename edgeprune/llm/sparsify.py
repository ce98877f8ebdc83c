"""Unstructured and N:M sparsity of decoder projections by magnitude or Wanda scores (masks from prune.masks)."""

from __future__ import annotations

import torch

from edgeprune.prune.masks import drop_lowest, keep_n_of_m


def magnitude_scores(weight: torch.Tensor) -> torch.Tensor:
    """Returns |W|, the importance of each weight by magnitude alone."""
    return weight.abs()


def unstructured_mask(scores: torch.Tensor, sparsity: float, per_row: bool) -> torch.Tensor:
    """Returns the keep-mask that drops the ``sparsity`` fraction of lowest scores.

    Wanda compares weights within each output row (``per_row``); magnitude pruning, as
    published, compares them across the whole matrix.
    """
    return drop_lowest(scores, int((scores.shape[1] if per_row else scores.numel()) * sparsity), per_row)


def sparsify_(
    weight: torch.Tensor,
    scores: torch.Tensor,
    sparsity: float,
    nm: tuple[int, int] | None,
    per_row: bool,
) -> None:
    """Zeroes the pruned weights in place (``weight`` may be a transposed view of a parameter)."""
    keep = keep_n_of_m(scores, *nm, dim=1) if nm else unstructured_mask(scores, sparsity, per_row)
    weight.masked_fill_(~keep, 0)
