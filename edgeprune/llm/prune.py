"""Pruning a transformers causal LM block by block: the entry point the build pipeline calls."""

from __future__ import annotations

import copy
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from edgeprune.errors import InputError
from edgeprune.llm.blocks import (
    DecoderArch,
    decoder_arch,
    decoder_layers,
    head_layout,
    weight_matrix,
)
from edgeprune.llm.calibrate import BlockInputs, capture_block_inputs, collect_input_stats
from edgeprune.llm.hidden import hidden_scores, kept_channels, prune_hidden_
from edgeprune.llm.logits import CausalLMLogits
from edgeprune.llm.sparsegpt import sparsegpt_
from edgeprune.llm.sparsify import magnitude_scores, sparsify_
from edgeprune.llm.width import apply_width_to_config, plan_width, prune_block_width
from edgeprune.prune.masks import wanda_scores
from edgeprune.tasks import is_causal_lm

METHODS = ("unstructured", "nm", "structured")
CRITERIA = ("magnitude", "wanda", "sparsegpt")


@dataclass(frozen=True)
class LLMPruneResult:
    """The pruned model (same wrapping as given) and what was done to it."""

    model: nn.Module
    details: dict[str, Any] = field(default_factory=dict)
    masks: dict[str, torch.Tensor] = field(default_factory=dict)


def calibration_batches(
    calibration: Iterable[Sequence[torch.Tensor] | torch.Tensor] | None, batch_size: int
) -> list[torch.Tensor]:
    """Returns the calibration token ids stacked into batches of up to ``batch_size`` sequences.

    Accepts a Workload's calibration (tuples whose first tensor is input_ids of shape
    (batch, seq)) or bare id tensors; consecutive sequences of equal length share a batch.
    """
    rows: list[torch.Tensor] = []
    for item in calibration or ():
        ids = item if isinstance(item, torch.Tensor) else item[0]
        if ids.is_floating_point():
            raise InputError("LLM calibration must hold token ids (integer tensors)")
        rows.extend((ids.unsqueeze(0) if ids.dim() == 1 else ids).long().split(1))
    batches: list[torch.Tensor] = []
    current: list[torch.Tensor] = []
    for row in rows:
        if current and (len(current) == batch_size or row.shape[1] != current[0].shape[1]):
            batches.append(torch.cat(current))
            current = []
        current.append(row)
    if current:
        batches.append(torch.cat(current))
    return batches


def _block_weights(layers: nn.ModuleList, arch: DecoderArch) -> list[torch.Tensor]:
    """Returns the weight of every block projection."""
    return [block.get_submodule(name).weight for block in layers for name in arch.projections()]


def _nonzero(tensors: Iterable[torch.Tensor]) -> int:
    return sum(int(torch.count_nonzero(t)) for t in tensors)


def sparsify_block(
    block: nn.Module,
    arch: DecoderArch,
    inputs: BlockInputs | None,
    criterion: str,
    sparsity: float,
    nm: tuple[int, int] | None,
) -> None:
    """Prunes every projection of one block to the sparsity (or N:M pattern), in place."""
    groups = arch.input_groups()
    stats = {}
    if criterion != "magnitude":
        gram = arch.projections() if criterion == "sparsegpt" else ()
        stats = collect_input_stats(block, inputs, groups, gram)
    for name in arch.projections():
        weight = weight_matrix(block.get_submodule(name))
        if criterion == "sparsegpt":
            sparsegpt_(weight, stats[name].gram, sparsity, nm)
        elif criterion == "wanda":
            sparsify_(weight, wanda_scores(weight, stats[name].norms().unsqueeze(0)), sparsity, nm, per_row=True)
        else:
            sparsify_(weight, magnitude_scores(weight), sparsity, nm, per_row=False)


def check_arguments(method: str, sparsity: float, criterion: str, nm: tuple[int, int]) -> None:
    """Raises InputError for a method, amount, criterion or pattern the causal-LM pruner does not take."""
    if method not in METHODS:
        raise InputError(f"causal-LM pruning method (--strategy) must be one of {', '.join(METHODS)}, got {method!r} "
                         "(hybrid is for CNNs and vision transformers)")
    if criterion not in CRITERIA:
        raise InputError(f"causal-LM pruning scores with {', '.join(CRITERIA)}, got --criterion {criterion}")
    if method == "structured" and criterion == "sparsegpt":
        raise InputError("structured LLM pruning scores with magnitude or wanda (restoration is its weight update)")
    if method == "nm":
        n, m = nm
        if not (0 < n < m):
            raise InputError(f"N:M sparsity needs 0 < N < M, got {n}:{m}")
    elif not 0.0 <= sparsity < 1.0:
        raise InputError(f"sparsity must be in [0, 1), got {sparsity}")


@torch.no_grad()
def prune_causal_lm(
    model: nn.Module,
    method: str,
    sparsity: float,
    calibration: Iterable[Sequence[torch.Tensor] | torch.Tensor] | None,
    criterion: str = "wanda",
    nm: tuple[int, int] = (2, 4),
    restore: bool = True,
    *,
    batch_size: int = 8,
    multiple: int = 1,
    inplace: bool = False,
) -> LLMPruneResult:
    """Returns the causal LM pruned block by block, with a details dict for the report.

    model: a transformers causal LM (OPT, LLaMA, Mistral, Qwen2, GPT-2), or the
        ``CausalLMLogits`` wrapper a causal-LM Workload carries; the result has the same form.
    method: ``unstructured`` (``sparsity`` of each projection's weights zeroed), ``nm``
        (``nm`` = (N, M): N kept in every M consecutive inputs; ``sparsity`` is ignored) or
        ``structured`` (key/value head groups, FFN neurons and hidden channels removed:
        ``sparsity`` of each width where the architecture allows it, see ``plan_width``).
    calibration: token-id batches (a Workload's calibration); not needed for magnitude.
    criterion: ``magnitude``, ``wanda`` or ``sparsegpt`` (weights updated; not structured).
    restore: structured only: refit the projection after each pruned width by least squares.
    batch_size: calibration sequences run through a block at once (activation memory).
    multiple: structured only: keep FFN widths a multiple of this (8 for fp16 tensor cores).
    inplace: prune ``model`` itself instead of a copy.

    Unstructured and N:M sparsity touch only decoder-block projections; structured pruning
    of the hidden width also narrows the embeddings, every norm and the LM head.
    """
    check_arguments(method, sparsity, criterion, nm)
    wrapped = isinstance(model, CausalLMLogits)
    lm = model.lm if wrapped else model
    if not is_causal_lm(lm):
        raise InputError(f"LLM pruning needs a transformers causal LM, got {type(lm).__name__}")
    if not inplace:
        lm = copy.deepcopy(lm)
    lm.eval()
    arch = decoder_arch(lm)
    layers = decoder_layers(lm, arch)
    config = lm.config
    started = time.perf_counter()
    params_before = sum(p.numel() for p in lm.parameters())
    block_weights_before = sum(w.numel() for w in _block_weights(layers, arch))
    layout = head_layout(config)
    ffn_before = weight_matrix(layers[0].get_submodule(arch.mlp_out)).shape[1]
    if method == "nm":
        sparsity = 1.0 - nm[0] / nm[1]

    needs_activations = criterion != "magnitude" or (method == "structured" and restore)
    batches = calibration_batches(calibration, batch_size) if needs_activations else []
    if needs_activations and not batches:
        raise InputError(f"{criterion} pruning needs calibration token ids; none were given")
    plan = plan_width(config, arch, sparsity, multiple) if method == "structured" else None
    hidden_before = config.hidden_size
    if plan is not None and plan.hidden < hidden_before:
        # the residual stream first, scored on the dense model: every block then prunes and
        # restores its heads and neurons on the narrowed stream
        dense_inputs = capture_block_inputs(lm, layers[0], batches) if criterion == "wanda" and batches else None
        prune_hidden_(lm, arch, layers, kept_channels(hidden_scores(lm, arch, layers, dense_inputs), plan.hidden))
        del dense_inputs
    inputs = capture_block_inputs(lm, layers[0], batches) if batches else None
    peak_inputs = inputs.nbytes if inputs else 0

    for block in layers:
        if plan is not None:
            prune_block_width(block, arch, layout, plan, inputs, criterion, restore)
        else:
            sparsify_block(block, arch, inputs, criterion, sparsity, nm if method == "nm" else None)
        if inputs is not None:
            inputs.advance(block)  # the next block calibrates on this pruned block's outputs
            peak_inputs = max(peak_inputs, inputs.nbytes)
    if plan is not None:
        apply_width_to_config(config, arch, plan)

    params_after = sum(p.numel() for p in lm.parameters())
    nonzero_after = _nonzero(lm.parameters())
    block_after = _block_weights(layers, arch)
    block_total = sum(w.numel() for w in block_after)
    block_nonzero = _nonzero(block_after)
    details: dict[str, Any] = {
        "method": method,
        "criterion": criterion,
        "sparsity": sparsity,
        "nm": f"{nm[0]}:{nm[1]}" if method == "nm" else None,
        "restore": restore if method == "structured" else None,
        "architecture": config.model_type,
        "layers": len(layers),
        "calibration": {
            "sequences": sum(b.shape[0] for b in batches),
            "seq_len": batches[0].shape[1] if batches else None,
            "tokens": inputs.tokens if inputs else 0,
            "block_input_bytes": peak_inputs,
        },
        "params_before": params_before,
        "params_after": params_after,
        "nonzero_params_after": nonzero_after,
        "block_weights_before": block_weights_before,
        "block_weights_after": block_total,
        "block_sparsity": 1.0 - block_nonzero / block_weights_before,
        "heads": {"before": list(layout[:2]), "after": list(head_layout(config)[:2])},
        "ffn_width": {"before": ffn_before, "after": weight_matrix(layers[0].get_submodule(arch.mlp_out)).shape[1]},
        "hidden_width": {"before": hidden_before, "after": config.hidden_size},
        "time_s": time.perf_counter() - started,
    }
    pruned = CausalLMLogits(lm) if wrapped else lm
    # the zeros of unstructured and N:M sparsity stay zeros through recovery
    masks = ({name: p != 0 for name, p in pruned.named_parameters() if p.dim() == 2 and bool((p == 0).any())}
             if method in ("unstructured", "nm") else {})
    return LLMPruneResult(pruned, details, masks)
