"""SparseGPT: prune a projection and update its remaining weights to keep X W^T unchanged.

Frantar and Alistarh, "SparseGPT: Massive Language Models Can Be Accurately Pruned in
One-Shot" (2023): weights are pruned column by column in blocks, and each pruned weight's
error is spread over the not-yet-visited columns through the inverse Hessian H = X^T X.
"""

from __future__ import annotations

import torch


def _inverse_hessian_cholesky(gram: torch.Tensor, damp: float) -> torch.Tensor:
    """Returns the upper Cholesky factor of (H + damp * mean(diag H) * I)^-1."""
    h = gram.double().clone()
    index = torch.arange(h.shape[0])
    h[index, index] += damp * torch.diagonal(h).mean().clamp_min(1e-12)
    inverse = torch.cholesky_inverse(torch.linalg.cholesky(h))
    return torch.linalg.cholesky(inverse, upper=True)


@torch.no_grad()
def sparsegpt_(
    weight: torch.Tensor,
    gram: torch.Tensor,
    sparsity: float,
    nm: tuple[int, int] | None = None,
    block_size: int = 128,
    damp: float = 0.01,
) -> None:
    """Prunes an (out, in) weight in place to ``sparsity`` (or ``n:m``) with SparseGPT updates.

    ``gram`` is X^T X of the projection's input over the calibration tokens. Inputs that
    never fire are pruned outright: no update can use them.
    """
    w = weight.detach().double().clone()
    gram = gram.double().clone()
    dead = torch.diagonal(gram) == 0
    gram[dead, dead] = 1.0
    w[:, dead] = 0.0
    hinv = _inverse_hessian_cholesky(gram, damp)
    columns = w.shape[1]
    for start in range(0, columns, block_size):
        end = min(start + block_size, columns)
        w_block = w[:, start:end].clone()
        h_block = hinv[start:end, start:end]
        h_diag = torch.diagonal(h_block)
        errors = torch.zeros_like(w_block)
        if nm is None:
            # SparseGPT's adaptive mask: the lowest w^2 / [H^-1]_jj^2 within this column block.
            saliency = w_block**2 / h_diag.unsqueeze(0) ** 2
            drop = int(saliency.numel() * sparsity)
            prune = torch.zeros(saliency.numel(), dtype=torch.bool)
            if drop:
                prune[torch.topk(saliency.flatten(), drop, largest=False).indices] = True
            prune = prune.view_as(saliency)
        else:
            prune = torch.zeros_like(w_block, dtype=torch.bool)
        for i in range(end - start):
            if nm is not None and i % nm[1] == 0:
                n, m = nm
                saliency = w_block[:, i : i + m] ** 2 / h_diag[i : i + m].unsqueeze(0) ** 2
                lowest = torch.topk(saliency, m - n, dim=1, largest=False).indices
                prune.scatter_(1, i + lowest, True)
            column = w_block[:, i]
            kept = column.masked_fill(prune[:, i], 0.0)
            error = (column - kept) / h_block[i, i]
            # spread this column's pruning error over the columns still to come in the block
            w_block[:, i:] -= error.unsqueeze(1) * h_block[i, i:].unsqueeze(0)
            w_block[:, i] = kept
            errors[:, i] = error
        w[:, start:end] = w_block
        w[:, end:] -= errors @ hinv[start:end, end:]
    weight.copy_(w.to(weight.dtype))
