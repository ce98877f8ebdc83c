"""How many units each group keeps: uniform or global allocation, a per-group cap, and
rounding of kept channel counts to the hardware's channel multiple."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Budget:
    """One group as the allocator sees it: its units, channels per unit and unit scores."""

    units: int
    unit_size: int
    scores: torch.Tensor


def keep_step(unit_size: int, channel_multiple: int) -> int:
    """Returns the smallest number of units whose channel count is a multiple of channel_multiple."""
    return channel_multiple // math.gcd(channel_multiple, unit_size)


def round_keep(keep: float, units: int, step: int, low: int) -> int:
    """Returns the kept unit count nearest ``keep`` that is a multiple of ``step`` and at least
    ``low``; keeping every unit is always allowed (the group is then left whole)."""
    candidates = [k for k in range(step, units + 1, step) if k >= low] + [units]
    return min(candidates, key=lambda k: (abs(k - keep), -k))


def min_keep(units: int, cap: float) -> int:
    """Returns the fewest units a group may keep under the per-group cap (at least one)."""
    return max(1, math.ceil(units * (1.0 - cap) - 1e-9))


def allocate(budgets: Sequence[Budget], sparsity: float, allocation: str, cap: float,
             channel_multiple: int) -> list[int]:
    """Returns the number of units each group keeps.

    ``uniform`` removes ``sparsity`` of every group's units; ``global`` removes the
    lowest-scoring units across all groups (scores normalised by each group's mean so groups
    of different scale compare) until ``sparsity`` of all channels are gone, no group
    losing more than ``cap`` of its units. Kept counts are then rounded to the channel multiple.
    """
    if allocation == "uniform":
        targets = [b.units * (1.0 - sparsity) for b in budgets]
    else:
        targets = [float(k) for k in _global_keep(budgets, sparsity, cap)]
    kept = []
    for b, target in zip(budgets, targets, strict=True):
        low = min_keep(b.units, cap)
        kept.append(round_keep(max(target, low), b.units, keep_step(b.unit_size, channel_multiple), low))
    return kept


def _global_keep(budgets: Sequence[Budget], sparsity: float, cap: float) -> list[int]:
    total = sum(b.units * b.unit_size for b in budgets)
    target = sparsity * total
    entries = []
    for gi, b in enumerate(budgets):
        normalised = b.scores.double() / b.scores.double().mean().clamp_min(1e-12)
        entries.extend((float(s), gi) for s in normalised)
    entries.sort()
    removed = [0] * len(budgets)
    removable = [b.units - min_keep(b.units, cap) for b in budgets]
    gone = 0
    for _, gi in entries:
        if gone >= target:
            break
        if removed[gi] < removable[gi]:
            removed[gi] += 1
            gone += budgets[gi].unit_size
    return [b.units - r for b, r in zip(budgets, removed, strict=True)]
