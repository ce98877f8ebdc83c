"""Unstructured sparsity: zero individual weights by magnitude or by Wanda's score."""

from __future__ import annotations

import torch
from torch import nn

from edgeprune.prune.api import PruneResult, register_pruner
from edgeprune.prune.attention import rewrite_multihead_attention
from edgeprune.prune.calibration import input_norms
from edgeprune.prune.config import UnstructuredConfig
from edgeprune.prune.masks import Masks, apply_masks, drop_lowest, sparsity, wanda_scores
from edgeprune.prune.roles import layer_roles
from edgeprune.prune.targets import WeightTarget, weight_targets

Batch = tuple[torch.Tensor, ...]


@register_pruner(UnstructuredConfig)
def _handle(model: nn.Module, config: UnstructuredConfig, calibration: list[Batch] | None,
            example_inputs: Batch) -> PruneResult:
    rewritten = rewrite_multihead_attention(model)
    roles = layer_roles(model, example_inputs)
    targets, dense = weight_targets(model, roles, config.include_embeddings, config.include_classifier)
    masks, details = sparsify(model, targets, config, calibration)
    details.update(left_dense=dense, attention_rewritten=rewritten)
    return PruneResult(model=model, masks=masks, details=details)


def weight_scores(targets: list[WeightTarget], criterion: str, norms: dict[nn.Module, torch.Tensor] | None
                  ) -> dict[WeightTarget, torch.Tensor]:
    """Returns each weight's score: |W|, or |W_ij| * ||X_j|| for ``wanda`` (embeddings, which
    have no input activations, fall back to |W|)."""
    scores = {}
    for t in targets:
        w = t.weight.detach().float()
        if criterion == "wanda" and norms is not None and t.module in norms:
            scores[t] = wanda_scores(w, t.input_scale(norms[t.module]))
        else:
            scores[t] = w.abs()
    return scores


def sparsify(model: nn.Module, targets: list[WeightTarget], config: UnstructuredConfig,
             calibration: list[Batch] | None) -> tuple[Masks, dict]:
    """Returns (masks, details) after zeroing ``config.sparsity`` of the targets' weights in place.

    ``layer`` scope prunes every weight to the same sparsity (wanda: every output row);
    ``global`` scope uses one magnitude threshold over all targets.
    """
    norms = None
    if config.criterion == "wanda":
        norms = input_norms(model, calibration or [], [t.module for t in targets if not isinstance(t.module, nn.Embedding)])
    scores = weight_scores(targets, config.criterion, norms)
    masks: Masks = {}
    if config.scope == "global" and targets:
        flat = torch.cat([s.reshape(-1) for s in scores.values()])
        keep = drop_lowest(flat, round(config.sparsity * flat.numel()))
        for t, part in zip(targets, keep.split([s.numel() for s in scores.values()]), strict=True):
            masks[t.name] = part.view(t.weight.shape)
    else:
        for t in targets:
            s = scores[t]
            if config.criterion == "wanda" and t.module in (norms or {}):
                rows = t.rows(s)
                masks[t.name] = t.from_rows(drop_lowest(rows, round(config.sparsity * rows.shape[1]), per_row=True))
            else:
                masks[t.name] = drop_lowest(s, round(config.sparsity * s.numel()))
    apply_masks(model, masks)
    layers = [{"name": t.name, "shape": list(t.weight.shape), "sparsity": round(1 - float(masks[t.name].float().mean()), 4)}
              for t in targets]
    details = {
        "kind": "unstructured",
        "criterion": config.criterion,
        "scope": config.scope,
        "target_sparsity": config.sparsity,
        "sparsity": round(sparsity(masks), 4),
        "layers": layers,
    }
    return masks, details
