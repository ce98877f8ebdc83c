"""Pruning: structured, unstructured, N:M and hybrid, behind one verb ``prune(model, config)``.

    config = config_for("structured", 0.5, profile=profile)   # or StructuredConfig(0.5, ...)
    result = prune(model, config, calibration, example_inputs)
    recover(result.model, model, finetune_data, steps=200, masks=result.masks)
"""

from edgeprune.prune import hybrid, nm, structured, unstructured  # noqa: F401  (register handlers)
from edgeprune.prune.api import PruneResult, prune, register_pruner
from edgeprune.prune.attention import ExplicitAttention, rewrite_multihead_attention
from edgeprune.prune.config import (
    HybridConfig,
    NMConfig,
    PruneConfig,
    StructuredConfig,
    UnstructuredConfig,
    config_for,
)
from edgeprune.prune.recover import recover

__all__ = [
    "ExplicitAttention",
    "HybridConfig",
    "NMConfig",
    "PruneConfig",
    "PruneResult",
    "StructuredConfig",
    "UnstructuredConfig",
    "config_for",
    "prune",
    "recover",
    "register_pruner",
    "rewrite_multihead_attention",
]
