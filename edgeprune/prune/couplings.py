"""The tracer's verdicts as Torch-Pruning index mappings, and which groups ran into them.

A mapping is appended to a dependency's list (Torch-Pruning itself writes only its first two
places), so it applies after any mapping the library set. A cut maps every index to none: the
group stops there and is kept whole, since its channels continue where they cannot be followed.
A heads mark maps indices unchanged: the group may be pruned only by whole heads. A spread
maps a channel to the inputs of a layer that reads it as one digit of its inputs (a flattened
channel, height and width: channel c is inputs c*hw .. c*hw+hw-1). A regrouped
convolution (a depthwise convolution with a channel multiplier, FastViT's downsampling) has
its groups as indices: input channel g is output channels g*m .. g*m+m-1. A join (a
concatenation of channels-last tensors, Swin's patch merging) offsets each input's channels
by the widths before it, widths that shrink as groups through it are pruned.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch_pruning as tp
from torch import nn

from edgeprune.prune.relayout import Verdict
from edgeprune.prune.trace import ChannelTracer


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
                 drop: bool = False, size: int = 0, width: int = 0) -> None:
        self.crossings, self.verdict = crossings, verdict
        self.scale, self.collapse, self.drop = scale, collapse, drop
        # a spread: the channel is the digit (index // scale) % size of width indices
        self.size, self.width = size, width

    def __call__(self, idxs):
        if idxs and self.verdict is not None:
            self.crossings.seen.append(self.verdict)
        if self.drop or not idxs:
            return []
        make = type(idxs[0])  # Torch-Pruning's index pair, built through the instance's own type
        size = self.size or (1 << 62)  # a regrouped convolution's groups: no outer digits
        if self.collapse:
            # one pair per index, in order: the traversal stops at a node reached again with the
            # same list, and the dependency graph keeps one root per index anyway
            first: dict = {}
            for i in idxs:
                first.setdefault(i.idx // self.scale % size, i.root_idx)
            return [make(k, first[k]) for k in sorted(first)]
        if self.scale > 1 or self.size:
            outer = range(0, self.width, self.scale * self.size) if self.size else [0]
            return [make(o + i.idx * self.scale + k, i.root_idx) for o in outer for i in idxs for k in range(self.scale)]
        return list(idxs)


@dataclass
class Join:
    """The widths of a concatenation's inputs, as pruning leaves them."""

    widths: list[int]

    def start(self, part: int) -> int:
        return sum(self.widths[:part])

    def remove(self, gone: list[int]) -> None:
        """Narrows the inputs by the concatenation's indices ``gone``."""
        starts = [self.start(k) for k in range(len(self.widths))]
        for k, start in enumerate(starts):
            self.widths[k] -= sum(1 for i in gone if start <= i < start + self.widths[k])


class _Offset:
    """Maps input ``part``'s channels into the concatenation (``into``) or back."""

    def __init__(self, join: Join, part: int, into: bool) -> None:
        self.join, self.part, self.into = join, part, into

    def __call__(self, idxs):
        if not idxs:
            return []
        make, start, width = type(idxs[0]), self.join.start(self.part), self.join.widths[self.part]
        if self.into:
            return [make(i.idx + start, i.root_idx) for i in idxs]
        return [make(i.idx - start, i.root_idx) for i in idxs if start <= i.idx < start + width]


@dataclass
class Couplings:
    """What the tracer found, installed on one dependency graph."""

    crossings: Crossings
    regrouped: dict[object, tuple[str, object]]  # graph node -> (name, convolution)
    joins: dict[object, Join]  # graph node -> its inputs' widths
    tracer: ChannelTracer

    def prune(self, pruning) -> None:
        """Prunes a group of the dependency graph, and what it does not prune itself: the groups of
        regrouped convolutions, the widths of joins."""
        regrouped = [(self.regrouped[item.dep.target][1], list(item.idxs)) for item in pruning
                     if item.dep.target in self.regrouped]
        joined = [(self.joins[item.dep.target], list(item.idxs)) for item in pruning if item.dep.target in self.joins]
        pruning.prune()
        for conv, gone in regrouped:
            remove_groups(conv, gone)
        for join, gone in joined:
            join.remove(gone)


def install(graph: tp.DependencyGraph, tracer: ChannelTracer) -> Couplings:
    """Appends the index mappings of the tracer's verdicts and regrouped convolutions to the graph."""
    crossings = Crossings()
    joins: dict[object, Join] = {}
    nodes = {node.grad_fn: node for node in graph.module2node.values()}
    for grad_fn, verdict in tracer.verdicts.items():
        node = nodes.get(grad_fn)
        if node is None:
            continue  # not on a path to the output
        if verdict.kind == "join":
            join = _install_join(node, verdict)
            if join is not None:
                joins[node] = join
                continue
            verdict = Verdict("cut", "a concatenation along the channel whose inputs were not all traced")
        if verdict.kind == "spread":  # the node's indices are the layer's inputs
            _between(node, node.inputs, _Mapping(crossings, None, verdict.inner, size=verdict.size, width=verdict.width),
                     _Mapping(crossings, None, verdict.inner, collapse=True, size=verdict.size, width=verdict.width))
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
    return Couplings(crossings, regrouped, joins, tracer)


def _install_join(node, verdict: Verdict) -> Join | None:
    """Appends each input's offset mappings; None (nothing appended) if an input is not found."""
    order = [n for n, _ in verdict.parts]
    if len(node.inputs) != len(order) or {n.grad_fn for n in node.inputs} != set(order):
        return None
    join = Join([w for _, w in verdict.parts])
    for other in node.inputs:
        part = order.index(other.grad_fn)
        for dep in other.dependencies:
            if dep.target is node:
                dep.index_mapping.append(_Offset(join, part, into=True))
        for dep in node.dependencies:
            if dep.target is other:
                dep.index_mapping.append(_Offset(join, part, into=False))
    return join


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
