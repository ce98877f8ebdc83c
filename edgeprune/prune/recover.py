"""Recovery after pruning: distil the dense model's outputs into the pruned one (no labels)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from edgeprune.errors import InputError
from edgeprune.prune.masks import Masks, apply_masks, mask_gradients


def _first_tensor(output) -> torch.Tensor:
    if isinstance(output, (tuple, list)):
        return _first_tensor(output[0])
    if isinstance(output, dict):
        return _first_tensor(next(iter(output.values())))
    return output


def recover(student: nn.Module, teacher: nn.Module, finetune_data: Iterable[Sequence[torch.Tensor]],
            steps: int, masks: Masks | None = None, lr: float = 5e-4, weight_decay: float = 0.0) -> dict:
    """Returns ``{steps, lr, loss_first, loss_last}`` after fine-tuning ``student`` in place.

    The loss is the mean squared error between the student's and the teacher's outputs on
    the fine-tuning inputs (logit matching), so any model and task work without labels.
    AdamW with a cosine-decayed learning rate; the data is cycled until ``steps`` optimizer
    steps are done. Masked-out weights (unstructured, N:M) get zero gradient and are zeroed
    again after every step, so the sparsity pattern survives exactly. The student stays in
    eval mode: normalization statistics and dropout are frozen, because batch statistics of
    a short run on small batches would pull it away from the teacher it is matching.
    """
    batches = [tuple(b) if not isinstance(b, torch.Tensor) else (b,) for b in (finetune_data or [])]
    if steps < 0:
        raise InputError(f"--recover needs a number of steps >= 0, got {steps}")
    if steps and not batches:
        raise InputError("--recover needs fine-tuning data, but the workload has no finetune_data")
    if steps == 0:
        return {"steps": 0, "lr": lr, "loss_first": None, "loss_last": None}
    masks = masks or {}
    teacher.eval()
    params = [p for p in student.parameters() if p.is_floating_point()]
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    losses = []
    student.eval()
    try:
        for step in range(steps):
            batch = batches[step % len(batches)]
            with torch.no_grad():
                target = _first_tensor(teacher(*batch)).float()
            loss = F.mse_loss(_first_tensor(student(*batch)).float(), target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            mask_gradients(student, masks)
            optimizer.step()
            schedule.step()
            apply_masks(student, masks)
            losses.append(loss.item())
    finally:
        student.eval()
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)
            p.grad = None
    tail = losses[-max(1, min(10, len(losses) // 10)):]
    return {"steps": steps, "lr": lr, "loss_first": losses[0], "loss_last": sum(tail) / len(tail)}
