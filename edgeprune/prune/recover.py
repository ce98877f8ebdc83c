"""Recovery after pruning: re-estimate normalization statistics, then distil the dense model's
outputs into the pruned one (no labels needed)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from edgeprune.errors import InputError
from edgeprune.prune.masks import Masks, apply_masks, mask_gradients

# enough batches for stable running statistics; more only costs time
RECALIBRATION_BATCHES = 32


def _first_tensor(output) -> torch.Tensor:
    if isinstance(output, (tuple, list)):
        return _first_tensor(output[0])
    if isinstance(output, dict):
        return _first_tensor(next(iter(output.values())))
    return output


def _batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


def recalibrate_batchnorm(model: nn.Module, batches: Sequence[Sequence[torch.Tensor]]) -> int:
    """Returns how many BatchNorm layers had their running statistics re-estimated on ``batches``.

    Pruning changes what every BatchNorm downstream sees, so the dense model's statistics no
    longer fit; averaging fresh ones over a few batches (no gradients) recovers much of the
    accuracy on its own.
    """
    norms = _batch_norms(model)
    if not norms or not batches:
        return 0
    momenta = [m.momentum for m in norms]
    was_training = model.training
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches
    model.train()
    try:
        with torch.no_grad():
            for batch in batches[:RECALIBRATION_BATCHES]:
                model(*batch)
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        model.train(was_training)
    return len(norms)


def recover(student: nn.Module, teacher: nn.Module, finetune_data: Iterable[Sequence[torch.Tensor]] | None,
            steps: int, masks: Masks | None = None, lr: float = 1e-3, weight_decay: float = 0.0) -> dict:
    """Returns ``{steps, lr, batchnorm_recalibrated, loss_first, loss_last}`` after fine-tuning
    ``student`` in place to reproduce ``teacher``.

    First the student's BatchNorm statistics are re-estimated on the fine-tuning inputs; then
    ``steps`` AdamW steps (cosine-decayed learning rate, the data cycled) minimise the mean
    squared error between the student's and the teacher's outputs (logit matching), so any
    model and task work without labels. The student trains in train mode (BatchNorm on batch
    statistics) unless a batch holds a single sample. Masked-out weights (unstructured, N:M)
    get zero gradient and are zeroed again after every step, so the sparsity pattern survives
    exactly. The teacher is not changed.
    """
    if steps < 0:
        raise InputError(f"--recover needs a number of steps >= 0, got {steps}")
    batches = [tuple(b) if not isinstance(b, torch.Tensor) else (b,) for b in (finetune_data or [])]
    if steps and not batches:
        raise InputError("--recover needs fine-tuning data, but the workload has no finetune_data")
    if steps == 0:
        return {"steps": 0, "lr": lr, "batchnorm_recalibrated": 0, "loss_first": None, "loss_last": None}
    masks = masks or {}
    teacher.eval()
    recalibrated = recalibrate_batchnorm(student, batches)
    params = [p for p in student.parameters() if p.is_floating_point()]
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    # batch statistics of a single sample are undefined: keep BatchNorm on its running ones then
    train_mode = all(b[0].shape[0] > 1 for b in batches if b[0].dim() > 0)
    losses = []
    student.train(train_mode)
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
    return {"steps": steps, "lr": lr, "batchnorm_recalibrated": recalibrated,
            "loss_first": losses[0], "loss_last": sum(tail) / len(tail)}
