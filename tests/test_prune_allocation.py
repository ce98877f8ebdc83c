"""Allocation of kept units: uniform and global, the per-group cap, channel-multiple rounding."""

from __future__ import annotations

import torch

from edgeprune.prune.allocation import Budget, allocate, keep_step, round_keep


def test_keep_step_makes_kept_channels_a_multiple():
    assert keep_step(1, 8) == 8      # single channels: keep 8, 16, ...
    assert keep_step(16, 8) == 1     # heads of 16 channels: any head count
    assert keep_step(4, 8) == 2      # four channel groups: two positions at a time
    assert keep_step(3, 1) == 1


def test_round_keep_picks_the_nearest_allowed_count():
    assert round_keep(11.2, 16, 8, 1) == 8
    assert round_keep(12.0, 16, 8, 1) == 16     # a tie keeps more
    assert round_keep(3.0, 20, 8, 1) == 8       # never fewer than one step
    assert round_keep(5.0, 6, 8, 1) == 6        # no multiple fits: the group stays whole
    assert round_keep(2.0, 16, 1, 4) == 4       # the cap's floor wins


def test_uniform_removes_the_same_fraction_everywhere():
    budgets = [Budget(16, 1, torch.rand(16)), Budget(64, 1, torch.rand(64)), Budget(4, 16, torch.rand(4))]
    assert allocate(budgets, 0.5, "uniform", 0.8, 1) == [8, 32, 2]
    assert allocate(budgets, 0.5, "uniform", 0.8, 8) == [8, 32, 2]
    assert allocate(budgets, 0.0, "uniform", 0.8, 8) == [16, 64, 4]


def test_global_ranks_across_groups_and_caps_each_group():
    weak = Budget(10, 1, torch.full((10,), 0.1) + torch.arange(10) * 1e-3)
    mixed = Budget(10, 1, torch.cat([torch.full((5,), 0.01), torch.full((5,), 10.0)]))
    kept = allocate([weak, mixed], 0.4, "global", 0.8, 1)
    # scores are compared relative to each group's mean: mixed's five near-zero units go first
    assert kept == [7, 5]
    assert sum(10 - k for k in kept) == 8
    capped = allocate([weak, mixed], 0.7, "global", 0.5, 1)
    assert capped == [5, 5]                      # neither group may lose more than half
