"""The causal-LM handler: a transformers decoder pruned block by block through edgeprune.llm."""

from __future__ import annotations

from torch import nn

from edgeprune.prune.api import PruneResult, register_pruner
from edgeprune.prune.config import CausalLMConfig


@register_pruner(CausalLMConfig)
def prune_causal_lm_handler(model: nn.Module, config: CausalLMConfig, calibration, example_inputs) -> PruneResult:
    """Prunes the (already copied) causal LM in place; masks keep its zeros through recovery."""
    from edgeprune.llm import prune_causal_lm

    result = prune_causal_lm(model, config.method, config.sparsity, calibration, criterion=config.criterion,
                             nm=tuple(config.nm), multiple=config.channel_multiple, inplace=True)
    return PruneResult(result.model, dict(result.masks), dict(result.details))
