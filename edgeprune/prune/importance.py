"""Channel importance for structured pruning: one score per root channel of a group.

Every criterion sums a per-channel quantity over the group's members, so that a channel's
score reflects every weight that disappears with it (the group view of DepGraph):

- ``l1`` / ``l2``: sum of |w| / w^2 over the channel's weights in every conv, linear and
  embedding of the group (``l2`` is the squared L2 norm of the group's slice).
- ``bn_scale``: |gamma| of the group's BatchNorm entries (network slimming).
- ``taylor``: sum of |w * dL/dw| (first-order Taylor estimate of the loss change).
- ``wanda``: sum over the consumers' columns of |W_ij| * ||X_j|| (activation-aware).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from edgeprune.prune.groups import ChannelGroup, Member

WEIGHTED = (nn.modules.conv._ConvNd, nn.Linear, nn.Embedding)


def channel_sums(module: nn.Module, values: torch.Tensor, kind: str) -> torch.Tensor:
    """Returns ``values`` (shaped like module.weight) summed per output or input channel."""
    if isinstance(module, nn.Linear):
        return values.sum(1) if kind == "out" else values.sum(0)
    if isinstance(module, nn.Embedding):
        return values.sum(0)  # the embedding dim is the channel, for both directions
    conv: nn.modules.conv._ConvNd = module  # type: ignore[assignment]
    g = conv.groups
    # weight is (out, in/g, *k) for convolutions and (in, out/g, *k) for transposed ones
    full_axis = "in" if conv.transposed else "out"
    if kind == full_axis:
        return values.flatten(1).sum(1)
    if g == conv.in_channels == conv.out_channels:  # depthwise: channel c has only weight[c]
        return values.flatten(1).sum(1)
    shaped = values.reshape(g, values.shape[0] // g, values.shape[1], -1)
    return shaped.sum((1, 3)).reshape(-1)


def _member_sum(member: Member, values: torch.Tensor, group: ChannelGroup, into: torch.Tensor) -> None:
    per_channel = channel_sums(member.module, values, member.kind)
    into.index_add_(0, torch.tensor(member.root_idxs, dtype=torch.long),
                    per_channel[torch.tensor(member.idxs, dtype=torch.long)].float())


def _weighted_members(group: ChannelGroup) -> list[Member]:
    return [m for m in group.members if isinstance(m.module, WEIGHTED)]


def magnitude(group: ChannelGroup, p: int) -> torch.Tensor:
    """Returns the L1 (p=1) or squared L2 (p=2) weight magnitude of every root channel."""
    scores = torch.zeros(group.channels)
    for m in _weighted_members(group):
        w = m.module.weight.detach().float()
        _member_sum(m, w.abs() if p == 1 else w.pow(2), group, scores)
    return scores


def bn_scale(group: ChannelGroup) -> torch.Tensor | None:
    """Returns the summed |gamma| of the group's BatchNorm entries (None if it has none)."""
    bns = [m for m in group.members if isinstance(m.module, nn.modules.batchnorm._BatchNorm) and m.module.affine]
    if not bns:
        return None
    scores = torch.zeros(group.channels)
    for m in bns:
        gamma = m.module.weight.detach().abs().float()
        scores.index_add_(0, torch.tensor(m.root_idxs), gamma[torch.tensor(m.idxs)])
    return scores


def taylor(group: ChannelGroup, grads: dict[nn.Parameter, torch.Tensor]) -> torch.Tensor | None:
    """Returns the summed |w * dL/dw| of every root channel (None if no member has gradients)."""
    scores = torch.zeros(group.channels)
    found = False
    for m in _weighted_members(group):
        g = grads.get(m.module.weight)
        if g is None:
            continue
        found = True
        _member_sum(m, (m.module.weight.detach() * g).abs().float(), group, scores)
    return scores if found else None


def wanda(group: ChannelGroup, norms: dict[nn.Module, torch.Tensor]) -> torch.Tensor | None:
    """Returns sum_i |W_ij| * ||X_j|| over the consumers of every root channel j (None if no
    consumer saw calibration data)."""
    scores = torch.zeros(group.channels)
    found = False
    for m in _weighted_members(group):
        if m.kind != "in" or isinstance(m.module, nn.Embedding) or m.module not in norms:
            continue
        found = True
        per_channel = channel_sums(m.module, m.module.weight.detach().abs().float(), "in") * norms[m.module]
        idxs = torch.tensor(m.idxs, dtype=torch.long)
        scores.index_add_(0, torch.tensor(m.root_idxs, dtype=torch.long), per_channel[idxs])
    return scores if found else None


def scorer(criterion: str, grads: dict | None = None, norms: dict | None = None
           ) -> Callable[[ChannelGroup], tuple[torch.Tensor, str]]:
    """Returns ``score(group) -> (per-root-channel scores, criterion actually used)``.

    A group the criterion cannot score (no BatchNorm for ``bn_scale``, no calibrated
    consumer for ``wanda``) falls back to ``l2``, and says so.
    """

    def score(group: ChannelGroup) -> tuple[torch.Tensor, str]:
        result = None
        if criterion == "l1":
            result = magnitude(group, 1)
        elif criterion == "bn_scale":
            result = bn_scale(group)
        elif criterion == "taylor":
            result = taylor(group, grads or {})
        elif criterion == "wanda":
            result = wanda(group, norms or {})
        if result is None:
            return magnitude(group, 2), "l2"
        return result, criterion

    return score
