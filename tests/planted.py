"""Planting prunable channels in a dense model: every weight of some chosen units zeroed.

Those units then contribute nothing and score zero, so structured pruning must remove exactly
them, and the pruned model must compute the same function as the planted one; a wrong index
anywhere (a concat offset, a grouped-conv slice, a head, a regrouped convolution) changes it.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from edgeprune.prune.allocation import Budget, allocate
from edgeprune.prune.attention import rewrite_multihead_attention
from edgeprune.prune.fused_heads import fused_head_groups
from edgeprune.prune.groups import ChannelGroup, build_graph, coupled_groups
from edgeprune.prune.heads import find_attention
from edgeprune.prune.roles import layer_roles


def _zero_slice(member, idxs: list[int]) -> None:
    module, kind = member.module, member.kind
    idx = torch.tensor(idxs, dtype=torch.long)
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        module.weight[idx] = 0
        module.bias[idx] = 0
    elif isinstance(module, nn.Linear):
        if kind == "out":
            module.weight[idx] = 0
            if module.bias is not None:
                module.bias[idx] = 0
        else:
            module.weight[:, idx] = 0
    elif isinstance(module, nn.modules.conv._ConvNd):
        w = module.weight
        out_axis = 1 if module.transposed else 0
        depthwise = module.groups == module.in_channels == module.out_channels
        if kind == "out" or depthwise:
            assert module.groups == 1 or not module.transposed
            w.index_fill_(out_axis, idx, 0)
            if module.bias is not None:
                module.bias[idx] = 0
        elif module.transposed:
            w[idx] = 0
        else:
            per_group_in = w.shape[1]
            per_group_out = w.shape[0] // module.groups
            for c in idxs:
                g = c // per_group_in
                w[g * per_group_out:(g + 1) * per_group_out, c % per_group_in] = 0
    else:
        raise AssertionError(f"cannot plant zeros in {type(module).__name__}")


def plant(model: nn.Module, inputs, sparsity: float, ignore: tuple[str, ...], seed: int = 0):
    """Returns (planted copy, number of groups planted): random units of every prunable group zeroed."""
    model = copy.deepcopy(model)
    rewrite_multihead_attention(model)
    modules = dict(model.named_modules())
    roles = layer_roles(model, inputs)
    protected = {modules[n]: "last" for n in roles.last} | {modules[n]: "ignored" for n in ignore}
    stems = {modules[n]: "first" for n in roles.first}
    attention = find_attention(model)
    analysis = build_graph(model, inputs, attention)
    found = coupled_groups(analysis, model, attention, protected, stems=stems)
    groups: list[ChannelGroup] = [g for g in fused_head_groups(found, analysis, attention, model, {})
                                  if g.skip is None]
    kept = allocate([Budget(g.units, g.unit_size, torch.ones(g.units)) for g in groups], sparsity, "uniform", 0.8, 1)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for g, keep in zip(groups, kept, strict=True):
            assert not any(isinstance(m.module, (nn.LayerNorm, nn.Embedding, nn.Parameter)) for m in g.members), g.names
            removed = torch.randperm(g.units, generator=gen)[: g.units - keep].tolist()
            root_channels = {c for u in removed for c in g.unit_channels(u)}
            for m in g.members:
                _zero_slice(m, [i for i, r in zip(m.idxs, m.root_idxs, strict=True) if r in root_channels])
    return model, len(groups)
