"""Groups of coupled channels, read from torch-pruning's dependency graph.

A group is everything that must lose the same channel together: the producing layer's
output slice, the BatchNorm/LayerNorm entries, every consumer's input slice, through
residual adds, concatenations and reshapes. Here each group is also given its pruning unit:
one channel, one position repeated in every channel group (grouped convolutions, GroupNorm),
or one attention head; and a reason when it must not be pruned at all.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch_pruning as tp
from torch import nn

from edgeprune.prune.couplings import Couplings, install
from edgeprune.prune.heads import AttentionModule, attention_of
from edgeprune.prune.trace import ChannelTracer

ROOT_TYPES = (nn.modules.conv._ConvNd, nn.Linear, nn.Embedding)


@dataclass
class Member:
    """One layer's share of a group: which of its channels (``idxs``) follow which root channels."""

    name: str
    module: nn.Module | nn.Parameter
    kind: str  # "out" or "in"
    idxs: list[int]
    root_idxs: list[int]
    regrouped: bool = False  # a convolution losing whole groups (couplings), not channels of each group


@dataclass
class ChannelGroup:
    """Coupled channels: ``channels`` root channels in units of ``unit_size`` channels each.

    A unit is a channel (unit_size 1), a position in every one of ``channel_groups`` groups
    (unit_size = channel_groups), an attention head (unit_size = head_dim), or a set of root
    channels that go together (``tied``: a regrouped convolution's group reaches several).
    """

    root: nn.Module
    handler: object
    channels: int
    members: list[Member]
    channel_groups: int = 1
    attention: AttentionModule | None = None
    skip: str | None = None
    names: list[str] = field(default_factory=list)
    held: bool = False  # kept for what it is (protected, avoided, the output), not for where its channels go
    # layers pruned each by itself instead of through the root's group, with each unit's channels
    # (a fused projection's heads, see fused_heads): (layer, pruning function, channels per unit)
    parts: list[tuple[nn.Module, object, list[list[int]]]] = field(default_factory=list)
    tied: list[list[int]] = field(default_factory=list)

    @property
    def is_heads(self) -> bool:
        return self.attention is not None

    @property
    def units(self) -> int:
        if self.tied:
            return len(self.tied)
        return self.attention.num_heads if self.attention else self.channels // self.channel_groups

    @property
    def unit_size(self) -> int:
        return self.channels // self.units

    def unit_channels(self, unit: int) -> list[int]:
        """Returns the root channels that make up one unit."""
        if self.tied:
            return self.tied[unit]
        if self.attention is not None:
            return list(range(unit * self.unit_size, (unit + 1) * self.unit_size))
        per_group = self.channels // self.channel_groups
        return [unit + g * per_group for g in range(self.channel_groups)]

    def unit_scores(self, channel_scores: torch.Tensor) -> torch.Tensor:
        """Returns the summed score of each unit from per-root-channel scores."""
        if self.tied:
            return torch.stack([channel_scores[torch.tensor(t)].sum() for t in self.tied])
        if self.attention is not None:
            return channel_scores.view(self.units, self.unit_size).sum(1)
        return channel_scores.view(self.channel_groups, -1).sum(0)

    def out_layers(self) -> list[Member]:
        return [m for m in self.members if m.kind == "out" and isinstance(m.module, ROOT_TYPES)]

    def describe(self) -> dict:
        return {"layers": self.names, "channels": self.channels, "unit": "head" if self.is_heads else "channel"}


@dataclass
class Analysis:
    """The dependency graph of a model and what the channel tracer installed on it."""

    graph: tp.DependencyGraph
    couplings: Couplings


def build_graph(model: nn.Module, example_inputs: Sequence[torch.Tensor],
                attention: Sequence[AttentionModule] = ()) -> Analysis:
    """Returns the dependency graph of the model, traced on the example inputs with the channel
    followed exactly (trace.ChannelTracer) and its verdicts installed (couplings).

    Parameters indexed by attention head (not by channel) are left out: the heads' own
    bookkeeping slices them (AttentionModule.remove_heads). A depthwise convolution with a
    channel multiplier is left to the couplings, which prune it by whole groups.
    """
    ignored = [p for a in attention for p in a.per_head_parameters()]
    regrouped = {m: m.out_channels // m.in_channels for m in model.modules()
                 if isinstance(m, nn.modules.conv._ConvNd) and not m.transposed
                 and 1 < m.groups == m.in_channels < m.out_channels}
    tracer = ChannelTracer(model, regrouped)
    with warnings.catch_warnings(), torch.enable_grad():
        warnings.simplefilter("ignore")
        graph = tp.DependencyGraph().build_dependency(
            model, example_inputs=tuple(example_inputs), forward_fn=lambda m, x: tracer.run(m, x), verbose=False,
            ignored_params=ignored, ignored_layers=list(regrouped))
    return Analysis(graph, install(graph, tracer))


def _channel_groups(module) -> int:
    if isinstance(module, nn.modules.conv._ConvNd) and module.groups > 1:
        depthwise = module.groups == module.out_channels == module.in_channels
        return 1 if depthwise else module.groups
    if isinstance(module, nn.GroupNorm):
        return module.num_groups
    return 1


def coupled_groups(analysis: Analysis, model: nn.Module, attention: list[AttentionModule],
                   protected: dict[nn.Module, str], avoid: dict[nn.Module, str] | None = None,
                   stems: dict[nn.Module, str] | None = None) -> list[ChannelGroup]:
    """Returns every group of coupled channels, each with its unit and, if it must stay, why.

    ``protected`` maps layers whose output channels must stay to the reason; ``avoid`` maps
    layers that must not change at all (in or out) to the reason. ``stems`` maps first layers
    whose output channels stay only when no other layer writes them: a stem feeding its own
    consumers keeps its width, while one that opens a residual stream (a ResNet stage, a
    transformer's embeddings) is pruned with the stream, which keeping would keep whole.
    """
    graph, couplings = analysis.graph, analysis.couplings
    names = {m: n for n, m in model.named_modules()}
    avoid = avoid or {}
    stems = stems or {}
    out: list[ChannelGroup] = []
    for group in graph.get_all_groups(root_module_types=ROOT_TYPES):
        crossed = couplings.crossings.take()  # what building this group ran into
        members = []
        skip = None
        for item in group:
            dep = item.dep
            target = dep.target
            kind = "out" if graph.is_out_channel_pruning_fn(dep.handler) else "in"
            if target.type == tp.ops.OPTYPE.OUTPUT:
                skip = skip or "changes the model's output width"
                continue
            if target in couplings.regrouped:
                name, conv = couplings.regrouped[target]
                m = conv.out_channels // conv.in_channels
                members.append(Member(name, conv, "out", [g * m + k for g in item.idxs for k in range(m)],
                                      [r for r in item.root_idxs for _ in range(m)], regrouped=True))
                continue
            if isinstance(target.module, nn.Parameter):
                name = graph._param_to_name.get(target.module, "parameter")
            elif target.module in names:
                name = names[target.module]
            else:
                continue  # dummy nodes: reshapes, adds, concatenations
            members.append(Member(name, target.module, kind, list(item.idxs), list(item.root_idxs)))
        root_item = group[0]
        cg = ChannelGroup(
            root=root_item.dep.target.module, handler=root_item.dep.handler,
            channels=len(root_item.idxs), members=members,
            names=list(dict.fromkeys(m.name for m in members)),
        )
        producers = [m.module for m in members if m.kind == "out" and isinstance(m.module, ROOT_TYPES + (nn.Parameter,))]
        for m in members:
            if m.kind == "out" and m.module in protected:
                skip = skip or protected[m.module]
            if m.kind == "out" and m.module in stems and len(set(producers)) == 1:
                skip = skip or stems[m.module]
            if m.module in avoid:
                skip = skip or avoid[m.module]
        cg.held = skip is not None
        cut = next((v.reason for v in crossed if v.kind == "cut"), None)
        skip = skip or (f"kept whole: its channels continue where they cannot be followed: {cut}" if cut else None)
        cg.skip = skip or _attention_unit(cg, attention)
        heads = next((v.reason for v in crossed if v.kind == "heads"), None)
        if cg.skip is None and not cg.is_heads and heads:
            cg.skip = f"kept whole: {heads}, and they are not the heads of an attention module"
        if cg.skip is None and not cg.is_heads:
            cg.channel_groups = math.lcm(*[_channel_groups(m.module) for m in members if not m.regrouped]) \
                if members else 1
            if cg.channels % cg.channel_groups:
                cg.skip = f"{cg.channels} channels do not split into {cg.channel_groups} channel groups"
            elif any(m.regrouped for m in members):
                cg.tied = _tied(graph, cg)
                couplings.crossings.take()  # the probes' crossings are this group's, already read
                if len({len(t) for t in cg.tied}) > 1 or (cg.channel_groups > 1 and len(cg.tied) < cg.channels):
                    cg.skip = "kept whole: a convolution's groups tie its channels into sets of unequal size"
        out.append(cg)
    return out


def _tied(graph: tp.DependencyGraph, group: ChannelGroup) -> list[list[int]]:
    """Returns the sets of root channels that go together: through a regrouped convolution one
    channel before it is several after it, so removing one of those removes them all. Each set
    is read from the group of one of its channels: the root's own channels in it."""
    left, sets = set(range(group.channels)), []
    while left:
        first = min(left)
        probe = graph.get_pruning_group(group.root, group.handler, [first])
        tied = {i for item in probe if item.dep.target.module is group.root
                and graph.is_out_channel_pruning_fn(item.dep.handler) for i in item.idxs} | {first}
        left -= tied
        sets.append(sorted(tied))
    return sets


def _attention_unit(group: ChannelGroup, attention: list[AttentionModule]) -> str | None:
    """Makes heads the unit of a q/k/v group; returns why the group must stay, or None.

    A q/k/v group lies wholly inside one attention module: three projections whose outputs
    are split into heads, and the output projection that reads them. Groups that merely
    touch attention layers (the residual stream feeding q/k/v and fed by the output
    projection) are ordinary channel groups.
    """
    if not group.members:
        return None
    outs = [m for m in group.members if m.kind == "out" and isinstance(m.module, nn.Linear)]
    consumers = [m for m in group.members if m.kind == "in" and isinstance(m.module, nn.Linear)]
    # the q/k/v projections decide: the output projection may sit in a sibling module
    # (Hugging Face's BertSelfOutput and ViTSelfOutput hold it beside the self-attention)
    owners = {attention_of(m.module, attention) for m in outs}
    if not outs or not consumers or len(owners) != 1 or None in owners:
        return None
    attn = owners.pop()
    if any(attention_of(m.module, attention) not in (attn, None) for m in consumers):
        return None
    # a block that records its head count and holds the attention module (torchvision's ViT
    # EncoderBlock) owns its other layers too: a group there that no inner attention touches is
    # its MLP, an ordinary channel group
    inner = [a for a in attention if a is not attn and a.parts < attn.parts]
    if inner and not any(m.module in a.parts for a in inner for m in group.members):
        return None
    widths = {m.module.out_features for m in outs}
    if len(outs) != 3 or len(consumers) != 1 or len(widths) != 1:
        return (f"attention {attn.name}: not three equal q/k/v projections and one output projection "
                "(fused or grouped-query projections are kept whole)")
    width = widths.pop()
    heads = attn.num_heads
    if heads < 1 or width % heads or width != group.channels:
        return f"attention {attn.name}: width {width} does not split into {heads} heads"
    if any(len(m.idxs) != width for m in outs + consumers):
        return f"attention {attn.name}: projections are coupled through a reshape that is not per head"
    group.attention = attn
    return None
