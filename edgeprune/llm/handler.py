"""The causal-LM pruning method: its config and its handler in the pruning registry.

A transformers causal LM is pruned block by block by ``prune_causal_lm`` with calibration of
its own per block; registering here (imported with edgeprune.llm) makes ``prune(model,
CausalLMConfig(...))`` reach it like any other method, without prune/ knowing of LLMs.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from edgeprune.errors import InputError
from edgeprune.llm.prune import check_arguments, prune_causal_lm
from edgeprune.prune.api import PruneResult, register_pruner
from edgeprune.tasks import find_causal_lm


@dataclass(frozen=True)
class CausalLMConfig:
    """Prune a transformers causal LM block by block: its own calibration per block.

    method: ``unstructured``, ``nm`` or ``structured`` (FFN neurons, whole key/value head
    groups and hidden channels, widths a multiple of ``channel_multiple``, the next projection
    restored by least squares). criterion: ``magnitude``, ``wanda`` or ``sparsegpt`` (not structured).
    """

    method: str
    sparsity: float
    criterion: str = "wanda"
    nm: tuple[int, int] = (2, 4)
    channel_multiple: int = 1

    def __post_init__(self) -> None:
        check_arguments(self.method, self.sparsity, self.criterion, tuple(self.nm))


@register_pruner(CausalLMConfig)
def prune_causal_lm_handler(model: nn.Module, config: CausalLMConfig, calibration, example_inputs) -> PruneResult:
    """Prunes the causal LM inside the (already copied) model in place, however it is wrapped.

    The masks are named from the model given, so recovery keeps the zeros of the LM inside.
    """
    found = find_causal_lm(model)
    if found is None:
        raise InputError(f"{type(model).__name__} holds no transformers causal LM for block-wise pruning")
    name, lm = found
    result = prune_causal_lm(lm, config.method, config.sparsity, calibration, criterion=config.criterion,
                             nm=tuple(config.nm), multiple=config.channel_multiple, inplace=True)
    prefix = f"{name}." if name else ""
    details = {**result.details, **({"wrapped_as": f"{type(model).__name__}.{name}"} if name else {})}
    return PruneResult(model, {prefix + k: v for k, v in result.masks.items()}, details)
