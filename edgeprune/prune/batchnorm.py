"""Re-estimating BatchNorm statistics after structured pruning, from calibration inputs."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

Batch = Sequence[torch.Tensor]


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Sequence[Batch]) -> int:
    """Returns how many BatchNorm layers were re-estimated on the batches (weights untouched).

    Removing input channels of a convolution shifts the distribution of its outputs, so the
    running mean and variance of the BatchNorm after it no longer describe them; a pruned
    CNN can lose most of its accuracy to that alone. Forward passes in train mode with a
    cumulative average replace the stale statistics; no weight changes, no labels needed.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms or not batches:
        return 0
    saved = [(m.momentum, m.training) for m in norms]
    was_training = model.training
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over all batches
        m.train()
    try:
        for batch in batches:
            model(*batch)
    finally:
        for m, (momentum, training) in zip(norms, saved, strict=True):
            m.momentum = momentum
            m.train(training)
        model.train(was_training)
    return len(norms)
