"""The prune stage of an evaluation: the plan's pruning applied to a copy of the workload's model, then recovery."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from edgeprune.errors import InputError
from edgeprune.llm import CausalLMConfig
from edgeprune.planning import Plan
from edgeprune.profile import Profile
from edgeprune.prune.api import prune
from edgeprune.prune.config import PruneConfig, config_for
from edgeprune.prune.recover import recalibrate_batchnorm, recover
from edgeprune.workload import Workload


@dataclass
class Pruned:
    """The model a plan produces (the dense model itself when the plan prunes nothing) and how."""

    model: nn.Module
    details: dict = field(default_factory=dict)
    masks: dict[str, torch.Tensor] = field(default_factory=dict)


def prune_config(plan: Plan, profile: Profile, workload: Workload) -> PruneConfig | CausalLMConfig | None:
    """Returns the pruning method's config for the plan (None when it prunes nothing).

    A transformers causal LM is pruned block by block (its widths rounded to the profile's
    channel multiple when structured); every other model by the general engines.
    """
    if not plan.prunes:
        return None
    if workload.is_causal_lm:
        multiple = int(profile.channel_multiple.value) if plan.kind == "structured" else 1
        return CausalLMConfig(plan.kind, plan.sparsity, plan.criterion or "wanda", plan.nm or (2, 4), multiple)
    nm = f"{plan.nm[0]}:{plan.nm[1]}" if plan.nm else None
    return config_for(plan.kind, None if plan.kind == "nm" else plan.sparsity, plan.criterion, nm, profile)


def check_prunable(plan: Plan, profile: Profile, workload: Workload) -> None:
    """Raises InputError, before any work, for a plan this workload cannot be pruned or recovered by."""
    if workload.is_causal_lm and plan.kind != "none":
        # the method and criterion are checked even when a search starts from the dense model
        CausalLMConfig(plan.kind, 0.0, plan.criterion or "wanda", plan.nm or (2, 4))
    if plan.kind in ("structured", "hybrid") and workload.graph_only:
        raise InputError(f"--strategy {plan.kind} removes channels from layer modules, and a torch.export program "
                         "has none (only its graph): give the nn.Module in a workload file, or prune the program "
                         "unstructured or N:M")
    if plan.recover and not workload.finetune_data:
        raise InputError("--recover needs Workload(finetune_data=...): the workload gives none")


def prune_for_plan(workload: Workload, plan: Plan, profile: Profile) -> Pruned:
    """Returns the model the plan builds: pruned (a copy; the dense model stays the baseline), then recovered."""
    config = prune_config(plan, profile, workload)
    if config is None:
        return Pruned(workload.model)
    check_prunable(plan, profile, workload)
    result = prune(workload.model, config, workload.calibration, workload.example_inputs)
    details = dict(result.details)
    if plan.kind in ("structured", "hybrid") and workload.calibration and not workload.is_causal_lm:
        details["batchnorm_recalibrated"] = recalibrate_batchnorm(result.model, workload.calibration_batches())
    if plan.recover:
        before = workload.score_model(result.model)
        info = dict(recover(result.model, workload.model, workload.finetune_data, plan.recover,
                            masks=result.masks or None))
        info.update({"steps": plan.recover, "metric_before": before, "metric_after": workload.score_model(result.model)})
        details["recovery"] = info
    return Pruned(result.model, details, result.masks)
