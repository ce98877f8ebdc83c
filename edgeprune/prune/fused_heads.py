"""Heads of an attention whose projections are fused and split into heads by a reshape.

LeViT computes q, k and v with one linear layer whose output a reshape splits into (heads,
q+k+v of one head), and reads the heads back through one output projection. The dependency
graph cannot follow that reshape and the split after it (the tracer cuts them), but the tracer
saw which layer's channels were split into which factors, and which layer reads channels
merged back from heads. Where an attention module's splits and its one merge each have one
factor equal to its head count, a head is a unit: removing it removes its slice of every fused
projection (and their norms) and of the output projection.
"""

from __future__ import annotations

import math
from dataclasses import replace

from torch import nn

from edgeprune.prune.groups import ROOT_TYPES, Analysis, ChannelGroup, Member
from edgeprune.prune.heads import AttentionModule


def fused_head_groups(groups: list[ChannelGroup], analysis: Analysis, attention: list[AttentionModule],
                      model: nn.Module, avoid: dict[nn.Module, str]) -> list[ChannelGroup]:
    """Returns ``groups`` with the groups of fused projections replaced by head groups, where found."""
    tracer = analysis.couplings.tracer
    modules = dict(model.named_modules())
    out = list(groups)
    for attn in attention:
        heads = attn.num_heads
        if heads < 2 or any(g.attention is attn for g in out):
            continue

        def inside(name: str) -> bool:
            return modules.get(name) in attn.parts  # noqa: B023 - used within this iteration only

        splits = {s.layer: s.factors for s in tracer.splits if inside(s.layer) and heads in s.factors}
        merges = {m.layer: m.factors for m in tracer.merges if inside(m.layer) and heads in m.factors}
        # the head is counted from the last factor (a head's width comes last, a q/k/v selector
        # first: (3, heads, width)); where the head count is also a width (LeViT's 16 heads of
        # 16-wide queries), it is at the place the attention's other reshapes put it
        places = {f.index(heads) - len(f) for f in [*splits.values(), *merges.values()] if f.count(heads) == 1}
        if not splits or len(merges) != 1 or len(places) != 1:
            continue
        place = places.pop()
        if any(len(f) < -place or f[place] != heads for f in [*splits.values(), *merges.values()]):
            continue
        (o_name, o_factors), = merges.items()
        o = modules[o_name]
        fused = {modules[n] for n in splits} | {o}
        owners = {name: _owner(out, modules[name], fused) for name in splits}
        if any(g is None for g in owners.values()) or o in avoid or any(
                m.module is o and m.kind == "in" for g in out if g not in owners.values() for m in g.members):
            continue
        fused = _fused(attn, analysis, [(modules[n], splits[n], owners[n]) for n in splits], o_name, o, o_factors,
                       place)
        if fused is None:
            continue
        out = [g for g in out if g not in owners.values()] + [fused]
    return out


def _owner(groups: list[ChannelGroup], layer: nn.Module, fused: set[nn.Module]) -> ChannelGroup | None:
    """Returns the group rooted at ``layer`` if its weight layers are all among the attention's
    fused projections and output projection (the dependency graph couples q to the output
    through the attention's products) and it is kept only because its channels could not be
    followed; else None."""
    found = [g for g in groups if g.root is layer]
    if len(found) != 1 or found[0].held:
        return None
    if any(isinstance(m.module, ROOT_TYPES) and m.module not in fused for m in found[0].members):
        return None
    return found[0]


def _per_head(factors: tuple[int, ...], heads: int, place: int) -> list[list[int]]:
    """Returns each head's channels of a width laid out as ``factors`` (heads at ``place``, from the end)."""
    inner = math.prod(factors[len(factors) + place + 1:])
    width = math.prod(factors)
    return [[c for c in range(width) if (c // inner) % heads == h] for h in range(heads)]


def _fused(attn: AttentionModule, analysis: Analysis, splits, o_name: str, o: nn.Module,
           o_factors: tuple[int, ...], place: int) -> ChannelGroup | None:
    heads = attn.num_heads
    graph = analysis.graph
    widest = max(math.prod(f) for f in [*(f for _, f, _ in splits), o_factors]) // heads
    members: list[Member] = []
    for _, factors, group in splits:
        if math.prod(factors) != group.channels:
            return None
        # a head's channels take the first places of its unit in the group's root channels
        root = {c: h * widest + j for h, cs in enumerate(_per_head(factors, heads, place)) for j, c in enumerate(cs)}
        seen = {(k.module, k.kind) for k in members}
        members.extend(replace(m, root_idxs=[root[r] for r in m.root_idxs]) for m in group.members
                       if m.module is not o and (m.module, m.kind) not in seen)
    width = o.in_features if isinstance(o, nn.Linear) else getattr(o, "in_channels", None)
    if width != math.prod(o_factors) or any(isinstance(m.module, nn.Parameter) for m in members):
        return None
    root = {c: h * widest + j for h, cs in enumerate(_per_head(o_factors, heads, place)) for j, c in enumerate(cs)}
    members.append(Member(o_name, o, "in", list(range(width)), [root[c] for c in range(width)]))
    # each layer is pruned by itself: the dependency graph couples q to the output projection
    # through the attention's products as if their widths were one
    parts = []
    for m in members:
        pruner = graph.get_pruner_of_module(m.module)
        fn = pruner.prune_out_channels if m.kind == "out" else pruner.prune_in_channels
        per_unit = [[i for i, r in zip(m.idxs, m.root_idxs, strict=True) if r // widest == h] for h in range(heads)]
        parts.append((m.module, fn, per_unit))
    return ChannelGroup(root=splits[0][0], handler=parts[0][1], channels=heads * widest, members=members,
                        attention=attn, names=list(dict.fromkeys(m.name for m in members)), parts=parts)
