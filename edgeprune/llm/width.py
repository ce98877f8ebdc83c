"""FASP-style width pruning: whole heads and FFN neurons out, the next projection restored.

A neuron of the MLP is one row of the input projections (fc1; gate and up) and the matching
column of the down projection; a head is its rows of q, k and v and its columns of the output
projection. Each is scored Wanda-style on the consuming projection's columns,
sum_i |W_ij| * ||X_j||_2, and the consuming projection is then refitted to the calibration
activations by least squares so that it keeps producing what the dense layer did.

Widths are uniform across blocks: transformers configs hold one ``intermediate_size`` and one
head count for all layers, and a pruned model must reload with ``from_pretrained``. Each block
still chooses its own neurons and heads.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from edgeprune.llm.blocks import DecoderArch, ffn_width, head_layout, weight_matrix
from edgeprune.llm.calibrate import BlockInputs, collect_input_stats
from edgeprune.llm.hidden import inner_attributes
from edgeprune.llm.surgery import keep_inputs_, keep_outputs_
from edgeprune.prune.calibration import InputStats


@dataclass(frozen=True)
class WidthPlan:
    """The widths every block keeps: query heads, key/value heads, FFN neurons, and the hidden width."""

    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    hidden: int


def column_scores(weight: torch.Tensor, input_norms: torch.Tensor | None) -> torch.Tensor:
    """Returns each input column's score, sum_i |W_ij| * ||X_j||_2 (magnitude alone without norms)."""
    scores = weight.detach().abs().sum(0).float()
    return scores * input_norms if input_norms is not None else scores


def least_squares_restore(
    weight: torch.Tensor, gram: torch.Tensor, keep: torch.Tensor, damp: float = 1e-4
) -> torch.Tensor:
    """Returns W' (out, len(keep)) minimising ||W X - W' X[keep]||^2 over the calibration tokens.

    Closed form: W' = W G[:, keep] (G[keep, keep] + lambda I)^-1 with G = X^T X; the small
    ridge term keeps the solve stable when kept inputs are nearly collinear.
    """
    # only the kept rows go to float64 (not the whole Gram matrix): a 7B model's FFN Gram is 485 MB in float32
    rows = gram[keep].double()
    g_kk = rows[:, keep]
    ridge = damp * torch.diagonal(g_kk).mean().clamp_min(1e-12)
    g_kk.diagonal().add_(ridge)  # in place: an identity matrix of the kept width would be another copy
    rhs = rows @ weight.detach().double().t()  # (kept, out)
    del rows
    return torch.linalg.solve(g_kk, rhs).t().to(weight.dtype)


def valid_kv_heads(config, kv_heads: int, group: int, head_dim: int, hidden: int | None = None) -> list[int]:
    """Returns the key/value head counts whose config the architecture's own class accepts.

    LLaMA's config, for one, insists that hidden_size be a multiple of the head count, so not
    every number of heads can be kept.
    """
    valid = []
    for kept in range(1, kv_heads + 1):
        fields = {
            **config.to_dict(),
            "num_attention_heads": kept * group,
            "num_key_value_heads": kept,
            "head_dim": head_dim,
            **({"hidden_size": hidden} if hidden is not None else {}),
        }
        try:
            type(config).from_dict(fields)
        except Exception:  # config validators raise their own error types across versions
            continue
        valid.append(kept)
    return valid


def plan_width(
    config, arch: DecoderArch, sparsity: float, multiple: int = 1, prune_heads: bool = True
) -> WidthPlan:
    """Returns the widths each block keeps.

    Where the architecture lets its hidden width shrink (LLaMA family, GPT-2), ``sparsity`` of
    every width goes, as structured pruning does for any model: key/value head groups (to a
    count the config accepts), FFN neurons and hidden channels (rounded to ``multiple``;
    GPT-2's hidden width is its heads x head_dim, so it follows the heads). Elsewhere (OPT)
    heads and hidden width stay, and the FFN loses enough to remove about ``sparsity`` of
    each block's projection weights.
    """
    heads, kv_heads, head_dim = head_layout(config)
    group = heads // kv_heads
    hidden = config.hidden_size
    ffn = ffn_width(config, arch)
    if arch.hidden_pruning and prune_heads:
        return _plan_every_width(config, arch, sparsity, multiple, (heads, kv_heads, head_dim))
    mlp_mats = len(arch.mlp_in) + 1
    attn_params = hidden * head_dim * (2 * heads + 2 * kv_heads)
    total = attn_params + mlp_mats * hidden * ffn

    kept_kv = kv_heads
    if prune_heads and arch.head_pruning and sparsity > 0:
        target = kv_heads * (1 - sparsity)
        candidates = valid_kv_heads(config, kv_heads, group, head_dim)
        # nearest allowed count; on a tie keep more heads
        kept_kv = min(candidates, key=lambda k: (abs(k - target), -k))
    attn_removed = attn_params * (1 - kept_kv / kv_heads)
    ffn_removed = max(0.0, sparsity * total - attn_removed) / (mlp_mats * hidden)
    kept_ffn = _round(ffn - ffn_removed, multiple, ffn)
    return WidthPlan(heads=kept_kv * group, kv_heads=kept_kv, head_dim=head_dim, ffn=kept_ffn, hidden=hidden)


def _round(width: float, multiple: int, limit: int) -> int:
    return min(limit, max(multiple, int(round(width / multiple) * multiple)))


def _plan_every_width(config, arch: DecoderArch, sparsity: float, multiple: int,
                      layout: tuple[int, int, int]) -> WidthPlan:
    heads, kv_heads, head_dim = layout
    group = heads // kv_heads
    hidden = config.hidden_size
    kept_ffn = _round(ffn_width(config, arch) * (1 - sparsity), multiple, ffn_width(config, arch))
    target = kv_heads * (1 - sparsity)
    if arch.hidden_pruning == "with_heads":
        kept_kv = min(range(1, kv_heads + 1), key=lambda k: (abs(k - target), -k))
        kept_hidden = kept_kv * group * head_dim
    else:
        # the (hidden width, head groups) pair the config accepts nearest the target, relative
        # to each width, among the 32 widths (multiples of ``multiple``) nearest it
        want = hidden * (1 - sparsity)
        widths = sorted(range(multiple, hidden + 1, multiple), key=lambda w: (abs(w - want), -w))[:32]
        pairs = [(w, k) for w in widths for k in valid_kv_heads(config, kv_heads, group, head_dim, w)]
        kept_hidden, kept_kv = min(pairs, key=lambda p: (abs(p[0] - want) / hidden + abs(p[1] - target) / kv_heads,
                                                         -p[0], -p[1]), default=(hidden, kv_heads))
    return WidthPlan(heads=kept_kv * group, kv_heads=kept_kv, head_dim=head_dim, ffn=kept_ffn, hidden=kept_hidden)


def _top(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Returns the indices of the ``count`` highest scores, in ascending index order."""
    return torch.topk(scores, count).indices.sort().values


def prune_heads_(
    block: nn.Module,
    arch: DecoderArch,
    layout: tuple[int, int, int],
    plan: WidthPlan,
    stats: InputStats | None,
    use_norms: bool,
    restore: bool,
) -> None:
    """Removes whole key/value groups (with their query heads) from one block, in place."""
    heads, kv_heads, head_dim = layout
    group = heads // kv_heads
    out_proj = block.get_submodule(arch.attn_out)
    w_out = weight_matrix(out_proj)
    columns = column_scores(w_out, stats.norms() if use_norms else None)
    # query head h reads key/value head h // group (transformers' repeat_kv layout)
    group_scores = columns.view(kv_heads, group * head_dim).sum(1)
    kept_groups = _top(group_scores, plan.kv_heads)
    kept_q_heads = (kept_groups.unsqueeze(1) * group + torch.arange(group)).flatten()
    q_rows = (kept_q_heads.unsqueeze(1) * head_dim + torch.arange(head_dim)).flatten()
    kv_rows = (kept_groups.unsqueeze(1) * head_dim + torch.arange(head_dim)).flatten()
    if len(arch.attn_in) == 1:  # one fused projection: q, k and v in equal thirds (GPT-2's c_attn)
        inner = heads * head_dim
        keep_outputs_(block.get_submodule(arch.attn_in[0]), torch.cat([q_rows, q_rows + inner, q_rows + 2 * inner]))
    else:
        q_name, k_name, v_name = arch.attn_in
        keep_outputs_(block.get_submodule(q_name), q_rows)
        keep_outputs_(block.get_submodule(k_name), kv_rows)
        keep_outputs_(block.get_submodule(v_name), kv_rows)
    restored = least_squares_restore(w_out, stats.gram, q_rows) if restore else None
    keep_inputs_(out_proj, q_rows, restored)
    inner_attributes(block.get_submodule(arch.attn_module), (heads, heads * head_dim),
                     (plan.heads, plan.heads * head_dim))


def prune_ffn_(
    block: nn.Module,
    arch: DecoderArch,
    plan: WidthPlan,
    stats: InputStats | None,
    use_norms: bool,
    restore: bool,
) -> None:
    """Removes the lowest-scoring FFN neurons of one block, in place."""
    down = block.get_submodule(arch.mlp_out)
    w_down = weight_matrix(down)
    kept = _top(column_scores(w_down, stats.norms() if use_norms else None), plan.ffn)
    for name in arch.mlp_in:
        keep_outputs_(block.get_submodule(name), kept)
    restored = least_squares_restore(w_down, stats.gram, kept) if restore else None
    keep_inputs_(down, kept, restored)


@torch.no_grad()
def prune_block_width(
    block: nn.Module,
    arch: DecoderArch,
    layout: tuple[int, int, int],
    plan: WidthPlan,
    inputs: BlockInputs,
    criterion: str,
    restore: bool,
) -> None:
    """Prunes one block's heads, then its FFN neurons, each on statistics gathered after the
    step before, so the MLP is scored and restored on the pruned attention's outputs."""
    use_norms = criterion == "wanda"
    gram = (arch.attn_out, arch.mlp_out) if restore else ()

    def stats_of(name: str) -> InputStats | None:
        if not (use_norms or restore):
            return None  # magnitude scores without restoration need no activations
        return collect_input_stats(block, inputs, [(name,)], gram)[name]

    if plan.kv_heads < layout[1]:
        prune_heads_(block, arch, layout, plan, stats_of(arch.attn_out), use_norms, restore)
    if plan.ffn < weight_matrix(block.get_submodule(arch.mlp_out)).shape[1]:
        prune_ffn_(block, arch, plan, stats_of(arch.mlp_out), use_norms, restore)


def apply_width_to_config(config, arch: DecoderArch, plan: WidthPlan) -> None:
    """Writes the pruned widths into the model config so that ``from_pretrained`` rebuilds it."""
    setattr(config, arch.ffn_field, plan.ffn)
    config.hidden_size = plan.hidden
    if arch.hidden_pruning == "with_heads":
        config.num_attention_heads = plan.heads
    if arch.head_pruning:
        config.num_attention_heads = plan.heads
        config.num_key_value_heads = plan.kv_heads
        # with fewer heads, hidden_size / heads is no longer the head size: state it
        config.head_dim = plan.head_dim
