"""The causal-LM handler: a transformers decoder pruned block by block through edgeprune.llm."""

from __future__ import annotations

from torch import nn

from edgeprune.errors import InputError
from edgeprune.prune.api import PruneResult, register_pruner
from edgeprune.prune.config import CausalLMConfig


@register_pruner(CausalLMConfig)
def prune_causal_lm_handler(model: nn.Module, config: CausalLMConfig, calibration, example_inputs) -> PruneResult:
    """Prunes the causal LM inside the (already copied) model in place, however it is wrapped.

    The masks are named from the model given, so recovery keeps the zeros of the LM inside.
    """
    from edgeprune.llm import prune_causal_lm
    from edgeprune.llm.hf import find_causal_lm

    found = find_causal_lm(model)
    if found is None:
        raise InputError(f"{type(model).__name__} holds no transformers causal LM for block-wise pruning")
    name, lm = found
    result = prune_causal_lm(lm, config.method, config.sparsity, calibration, criterion=config.criterion,
                             nm=tuple(config.nm), multiple=config.channel_multiple, inplace=True)
    prefix = f"{name}." if name else ""
    details = {**result.details, **({"wrapped_as": f"{type(model).__name__}.{name}"} if name else {})}
    return PruneResult(model, {prefix + k: v for k, v in result.masks.items()}, details)
