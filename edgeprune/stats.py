"""Model statistics for the report: parameters, non-zero parameters, MACs."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def count_params(model: torch.nn.Module) -> int:
    """Returns the number of parameters (tied parameters counted once)."""
    return sum(p.numel() for p in model.parameters())


def count_nonzero_params(model: torch.nn.Module) -> int:
    """Returns the number of parameters that are not exactly zero."""
    return sum(int(torch.count_nonzero(p)) for p in model.parameters())


@torch.no_grad()
def count_macs(model: torch.nn.Module, example_inputs: Sequence[torch.Tensor]) -> int:
    """Returns multiply-accumulates of one forward pass (FLOPs / 2 by torch's counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        model(*example_inputs)
    return counter.get_total_flops() // 2


def model_stats(model: torch.nn.Module, example_inputs: Sequence[torch.Tensor]) -> dict:
    """Returns params, non-zero params and MACs of a model."""
    return {
        "params": count_params(model),
        "nonzero_params": count_nonzero_params(model),
        "macs": count_macs(model, example_inputs),
    }
