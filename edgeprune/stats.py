"""Model size and compute: parameters, non-zero parameters and multiply-accumulates (MACs)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count


def _unique_parameters(model: nn.Module) -> list[nn.Parameter]:
    # named_parameters() already drops repeats, so tied weights count once
    return [p for _, p in model.named_parameters()]


def count_params(model: nn.Module) -> int:
    """Returns the number of parameters, counting tied (shared) parameters once."""
    return sum(p.numel() for p in _unique_parameters(model))


def count_nonzero_params(model: nn.Module) -> int:
    """Returns the number of parameters that are not exactly zero (tied ones counted once)."""
    return sum(int(torch.count_nonzero(p.detach())) for p in _unique_parameters(model))


def _sdpa_cpu_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


# FlopCounterMode knows the CUDA attention kernels but not the CPU one
_EXTRA = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flops}


def count_macs(model: nn.Module, example_inputs: Sequence[torch.Tensor]) -> int:
    """Returns the multiply-accumulates of one forward pass on the example inputs.

    Counted by dispatch (torch.utils.flop_counter): convolutions (grouped, depthwise,
    transposed), linears, matmuls and attention, whatever module issues them. Elementwise
    work (activations, norms, adds) is not counted; it is small next to these.
    """
    was_training = model.training
    model.eval()
    try:
        # with gradients on, nn.MultiheadAttention takes its composite path, whose matmuls
        # are counted; its fused inference kernel is not
        with torch.enable_grad(), FlopCounterMode(display=False, custom_mapping=_EXTRA) as counter:
            model(*example_inputs)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops()) // 2


def model_stats(model: nn.Module, example_inputs: Sequence[torch.Tensor]) -> dict[str, int]:
    """Returns ``{params, nonzero_params, macs}`` of the model on the example inputs."""
    return {
        "params": count_params(model),
        "nonzero_params": count_nonzero_params(model),
        "macs": count_macs(model, example_inputs),
    }
