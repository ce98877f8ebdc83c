"""The tracer's verdicts as Torch-Pruning index mappings, and which groups ran into them.

A mapping is appended to a dependency's list (Torch-Pruning itself writes only its first two
places), so it applies after any mapping the library set. A cut maps every index to none: the
group stops there and is kept whole, since its channels continue where they cannot be followed.
A heads mark maps indices unchanged: the group may be pruned only by whole heads. A regrouped
convolution (a depthwise convolution with a channel multiplier, FastViT's downsampling) has
its groups as indices: input channel g is output channels g*m .. g*m+m-1.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch_pruning as tp
from torch import nn

from edgeprune.prune.trace import ChannelTracer, Verdict


@dataclass
class Crossings:
    """The verdicts a group's traversal ran into, gathered until ``take`` is called."""

    seen: list[Verdict] = field(default_factory=list)

    def take(self) -> list[Verdict]:
        found, self.seen = self.seen, []
        return found


class _Mapping:
    """Maps a list of Torch-Pruning's (idx, root_idx) pairs; records a crossing when it carries any."""

    def __init__(self, crossings: Crossings, verdict: Verdict | None, scale: int = 1, collapse: bool = False,
                 drop: bool = False) -> None:
        self.crossings, self.verdict = crossings, verdict
        self.scale, self.collapse, self.drop = scale, collapse, drop

    def __call__(self, idxs):
        if idxs and self.verdict is not None:
            self.crossings.seen.append(self.verdict)
        if self.drop or not idxs:
            return []
        make = type(idxs[0])  # Torch-Pruning's index pair, built through the instance's own type
        if self.collapse:
            # one pair per index, in order: the traversal stops at a node reached again with the
            # same list, and the dependency graph keeps one root per index anyway
            first: dict = {}
            for i in idxs:
                first.setdefault(i.idx // self.scale, i.root_idx)
            return [make(k, first[k]) for k in sorted(first)]
        if self.scale > 1:
            return [make(i.idx * self.scale + k, i.root_idx) for i in idxs for k in range(self.scale)]
        return list(idxs)


@dataclass
class Couplings:
    """What the tracer found, installed on one dependency graph."""

    crossings: Crossings
    regrouped: dict[object, tuple[str, object]]  # graph node -> (name, convolution)
    tracer: ChannelTracer


def install(graph: tp.DependencyGraph, tracer: ChannelTracer) -> Couplings:
    """Appends the index mappings of the tracer's verdicts and regrouped convolutions to the graph."""
    crossings = Crossings()
    nodes = {node.grad_fn: node for node in graph.module2node.values()}
    for grad_fn, verdict in tracer.verdicts.items():
        node = nodes.get(grad_fn)
        if node is None:
            continue  # not on a path to the output
        if verdict.kind == "flatten":
            # the node's indices are the flattened ones: its input channel c is c*k .. c*k+k-1
            _between(node, node.inputs, _Mapping(crossings, None, verdict.stride),
                     _Mapping(crossings, None, verdict.stride, collapse=True))
            continue
        mark = _Mapping(crossings, verdict, drop=verdict.kind == "cut")
        for other in node.inputs + node.outputs:
            for dep in other.dependencies:
                if dep.target is node:
                    dep.index_mapping.append(mark)
    regrouped = {}
    for grad_fn, (name, conv) in tracer.regrouped.items():
        node = nodes.get(grad_fn)
        if node is None:
            continue
        m = conv.out_channels // conv.in_channels
        # the node's indices are the convolution's groups (its input channels)
        _between(node, node.outputs, _Mapping(crossings, None, m, collapse=True), _Mapping(crossings, None, m))
        regrouped[node] = (name, conv)
    return Couplings(crossings, regrouped, tracer)


def _between(node, others, into: _Mapping, back: _Mapping) -> None:
    """Appends ``into`` to the dependencies from ``others`` to ``node`` and ``back`` to those from
    ``node`` to ``others``."""
    for other in others:
        for dep in other.dependencies:
            if dep.target is node:
                dep.index_mapping.append(into)
        for dep in node.dependencies:
            if dep.target is other:
                dep.index_mapping.append(back)


def remove_groups(conv: nn.modules.conv._ConvNd, gone: list[int]) -> None:
    """Removes whole groups (input channel g and its output channels g*m .. g*m+m-1) from a
    depthwise convolution with a channel multiplier m."""
    m = conv.out_channels // conv.in_channels
    kept = [g for g in range(conv.in_channels) if g not in set(gone)]
    rows = torch.tensor([g * m + k for g in kept for k in range(m)], dtype=torch.long, device=conv.weight.device)
    conv.weight = nn.Parameter(conv.weight.detach().index_select(0, rows).clone(), requires_grad=conv.weight.requires_grad)
    if conv.bias is not None:
        conv.bias = nn.Parameter(conv.bias.detach().index_select(0, rows).clone(), requires_grad=conv.bias.requires_grad)
    conv.in_channels = conv.groups = len(kept)
    conv.out_channels = len(kept) * m
