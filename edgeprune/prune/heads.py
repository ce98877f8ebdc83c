"""Finding attention modules and their head counts, and updating them after heads are removed.

A module counts as attention when it holds nn.Linear layers and an integer head-count
attribute under one of the usual names (``num_heads``, ``n_head``, ...). Which of its linears
are q/k/v and which is the output projection is read from the dependency graph, not from names.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from edgeprune.prune.attention import ExplicitAttention

# layers whose parameters the dependency tracer follows itself
LAYERS_WITH_WEIGHTS = (nn.Linear, nn.modules.conv._ConvNd, nn.Embedding, nn.LayerNorm, nn.GroupNorm,
                       nn.modules.batchnorm._BatchNorm)
HEAD_COUNT_NAMES = ("num_heads", "n_heads", "n_head", "num_attention_heads", "heads")
# attributes holding an inner width (heads x per-head width) that a forward pass may reshape to
# (LeViT keeps one for its keys and one for its values)
INNER_WIDTH_NAMES = ("all_head_size", "inner_dim", "inner_size", "attn_dim", "key_attn_dim", "val_attn_dim")


@dataclass(eq=False)
class AttentionModule:
    """An attention module, its head-count attribute and every module inside it.

    ``per_head`` lists parameters indexed by head outside the projections (Swin's relative
    position bias table, LeViT's attention biases) as (owner, attribute, head axis): the
    dependency tracer would couple them to the projections' channels, so they are kept out
    of its graph and sliced here when heads go.
    """

    name: str
    module: nn.Module
    heads_attr: str
    parts: frozenset[nn.Module]
    per_head: tuple[tuple[nn.Module, str, int], ...] = ()

    @property
    def num_heads(self) -> int:
        return int(getattr(self.module, self.heads_attr))

    def per_head_parameters(self) -> list[nn.Parameter]:
        return [getattr(owner, attr) for owner, attr, _ in self.per_head]

    def remove_heads(self, removed: list[int], widths: frozenset[int] = frozenset()) -> None:
        """Updates the head count (and inner-width attributes) after ``removed`` heads are gone.

        An inner width is an attribute of a known name (INNER_WIDTH_NAMES) or one equal to the
        width of a layer that lost the heads (``widths``, before): Hugging Face's LeViT reshapes
        to ``out_dim_projection``. Should such an attribute be something else that the forward
        needs unchanged, the pruned model fails to run and the heads are kept on the next try.
        """
        old = self.num_heads
        new = old - len(removed)
        setattr(self.module, self.heads_attr, new)
        kept = torch.tensor([h for h in range(old) if h not in set(removed)], dtype=torch.long)
        for owner, attr, axis in self.per_head:
            param = getattr(owner, attr)
            setattr(owner, attr, nn.Parameter(param.detach().index_select(axis, kept).clone(),
                                              requires_grad=param.requires_grad))
        if isinstance(self.module, ExplicitAttention):
            gone = set(removed)
            self.module.kept_heads = tuple(h for i, h in enumerate(self.module.kept_heads) if i not in gone)
        named = {a: getattr(self.module, a, None) for a in INNER_WIDTH_NAMES}
        widths_of = {a: v for a, v in vars(self.module).items() if type(v) is int and v in widths}
        for attr, value in {**named, **widths_of}.items():
            if type(value) is int and value % old == 0:
                setattr(self.module, attr, value // old * new)


def find_attention(model: nn.Module) -> list[AttentionModule]:
    """Returns the attention modules of the model (innermost first when they nest)."""
    found = []
    for name, module in model.named_modules():
        attr = next((a for a in HEAD_COUNT_NAMES if isinstance(getattr(module, a, None), int)
                     and not isinstance(getattr(module, a), bool)), None)
        if attr is None or isinstance(module, nn.MultiheadAttention):
            continue
        parts = frozenset(module.modules())
        if any(isinstance(m, nn.Linear) for m in parts):
            found.append(AttentionModule(name, module, attr, parts, _per_head(module, int(getattr(module, attr)))))
    # an inner attention module owns its layers; an outer one (a block that also records
    # its head count) only the rest
    found.sort(key=lambda a: len(a.parts))
    return found


def _per_head(module: nn.Module, heads: int) -> tuple[tuple[nn.Module, str, int], ...]:
    """Returns the parameters of ``module`` outside its weight layers with exactly one axis of length ``heads``."""
    found = []
    for owner in module.modules():
        if isinstance(owner, LAYERS_WITH_WEIGHTS):
            continue
        for attr, param in owner.named_parameters(recurse=False):
            axes = [i for i, n in enumerate(param.shape) if n == heads]
            if heads > 1 and len(axes) == 1:
                found.append((owner, attr, axes[0]))
    return tuple(found)


def attention_of(module, attention: list[AttentionModule]) -> AttentionModule | None:
    """Returns the innermost attention module holding ``module``, or None."""
    return next((a for a in attention if module in a.parts), None)
