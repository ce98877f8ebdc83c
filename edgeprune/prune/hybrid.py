"""Hybrid pruning: structured where it makes a transformer smaller and faster (convolutions,
MLP blocks), unstructured where removing whole units hurts most (embeddings, attention
projections)."""

from __future__ import annotations

import torch
from torch import nn

from edgeprune.prune.api import PruneResult, register_pruner
from edgeprune.prune.config import HybridConfig
from edgeprune.prune.heads import AttentionModule
from edgeprune.prune.roles import layer_roles
from edgeprune.prune.structured import prune_structured
from edgeprune.prune.targets import weight_targets
from edgeprune.prune.unstructured import sparsify

Batch = tuple[torch.Tensor, ...]
REASON = "hybrid: attention projections and embeddings are sparsified, not narrowed"


def _sparse_side(model: nn.Module, attention: list[AttentionModule]) -> dict[nn.Module, str]:
    """Returns the layers that hybrid pruning keeps at full width: attention linears, embeddings."""
    keep = {m: REASON for a in attention for m in a.parts if isinstance(m, nn.Linear)}
    keep.update({m: REASON for m in model.modules() if isinstance(m, nn.Embedding)})
    return keep


@register_pruner(HybridConfig)
def _handle(model: nn.Module, config: HybridConfig, calibration: list[Batch] | None,
            example_inputs: Batch) -> PruneResult:
    captured: dict[nn.Module, str] = {}

    def avoid(m: nn.Module, attention: list[AttentionModule]) -> dict[nn.Module, str]:
        captured.update(_sparse_side(m, attention))
        return captured

    structured = prune_structured(model, config.structured(), calibration, example_inputs, avoid=avoid)
    model = structured.model
    names = {m: n for n, m in model.named_modules()}
    sparse_layers = {names[m] for m in captured if m in names}
    roles = layer_roles(model, example_inputs)
    unstructured = config.unstructured()
    targets, dense = weight_targets(model, roles, unstructured.include_embeddings,
                                    unstructured.include_classifier, only=sparse_layers)
    masks, sparse_details = sparsify(model, targets, unstructured, calibration)
    sparse_details["left_dense"] = dense
    narrowed = sorted({name for g in structured.details["groups"] if g["channels_after"] < g["channels"]
                       for name in g["layers"]})
    details = {
        "kind": "hybrid",
        "split": {
            "structured": narrowed,
            "unstructured": [t.name for t in targets],
            "rule": "structured: convolutions and MLP blocks; unstructured: embeddings and attention projections",
        },
        "structured": structured.details,
        "unstructured": sparse_details,
    }
    return PruneResult(model=model, masks=masks, details=details)
