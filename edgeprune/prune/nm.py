"""N:M sparsity: in every block of M consecutive weights along the input dimension, keep N.

Sparse tensor cores (2:4 on Ampere and later, through TensorRT) take the pattern along the
reduction dimension: a linear's input features, a convolution's input channels at each
kernel position. Layers a 2:4 kernel cannot take stay dense and are listed with the reason.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from edgeprune.prune.api import PruneResult, register_pruner
from edgeprune.prune.attention import rewrite_multihead_attention
from edgeprune.prune.calibration import input_norms
from edgeprune.prune.config import NMConfig
from edgeprune.prune.masks import Masks, apply_masks, keep_n_of_m, sparsity
from edgeprune.prune.roles import layer_roles
from edgeprune.prune.targets import WeightTarget, weight_targets
from edgeprune.prune.unstructured import weight_scores

Batch = tuple[torch.Tensor, ...]
# sparse GEMM kernels tile inputs by 16 and outputs by 8 (cuSPARSELt / TensorRT constraints)
INPUT_MULTIPLE = 16
OUTPUT_MULTIPLE = 8


def layer_widths(target: WeightTarget) -> tuple[int, int]:
    """Returns (inputs per output, outputs) of a linear or convolution weight: the GEMM's K and N."""
    return int(target.weight.shape[1]), int(target.weight.shape[0])


def why_dense(target: WeightTarget, config: NMConfig) -> str | None:
    """Returns why a 2:4-style kernel cannot take this layer, or None if it can."""
    if target.transposed:
        return "transposed convolution (no sparse kernel)"
    if isinstance(target.module, nn.Embedding) or target.weight.dim() < 2:
        return f"{type(target.module).__name__} is not a matrix multiply"
    k, n = layer_widths(target)
    need = math.lcm(INPUT_MULTIPLE, config.m)
    if k % need:
        return f"input width {k} is not a multiple of {need}"
    if n % OUTPUT_MULTIPLE:
        return f"output width {n} is not a multiple of {OUTPUT_MULTIPLE}"
    if min(k, n) < config.min_channels:
        return f"width {min(k, n)} is below the profile's minimum of {config.min_channels} for N:M"
    return None


@register_pruner(NMConfig)
def _handle(model: nn.Module, config: NMConfig, calibration: list[Batch] | None,
            example_inputs: Batch) -> PruneResult:
    rewritten = rewrite_multihead_attention(model)
    roles = layer_roles(model, example_inputs)
    candidates, dense = weight_targets(model, roles, include_embeddings=False, include_classifier=config.include_classifier)
    targets = []
    for t in candidates:
        reason = why_dense(t, config)
        if reason:
            dense.append({"name": t.name, "shape": list(t.weight.shape), "reason": reason})
        else:
            targets.append(t)
    norms = None
    if config.criterion == "wanda":
        norms = input_norms(model, calibration or [], [t.module for t in targets])
    scores = weight_scores(targets, config.criterion, norms)
    masks: Masks = {t.name: keep_n_of_m(scores[t], config.n, config.m, t.in_dim) for t in targets}
    apply_masks(model, masks)
    details = {
        "kind": "nm",
        "pattern": config.pattern,
        "criterion": config.criterion,
        "sparsity": round(sparsity(masks), 4),
        "layers": [{"name": t.name, "shape": list(t.weight.shape)} for t in targets],
        "left_dense": dense,
        "attention_rewritten": rewritten,
    }
    return PruneResult(model=model, masks=masks, details=details)
