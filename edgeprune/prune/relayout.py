"""An op re-expressed for the dependency graph's trace, and what it does to the channel.

Torch-Pruning names a node of its graph by the autograd function that made it (a view is a
reshape it maps by its own rules, a concatenation one it offsets on axis 1). An op it would map
wrongly is computed inside ``Relayout`` instead: one node whose name the library reads as an
elementwise op, carrying a ``Verdict`` that the couplings turn into the right index mapping.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Verdict:
    """What an op re-expressed for the trace does to the channel: ``cut`` (not followable),
    ``heads`` (split into or merged from heads, indices kept), ``spread`` (a layer reads the
    channel as the digit ``(index // inner) % size`` of its ``width`` inputs: a flattened one) or
    ``join`` (a concatenation of channels on an axis the dependency graph does not map)."""

    kind: str
    reason: str
    inner: int = 1
    size: int = 0
    width: int = 0
    parts: tuple[tuple[object, int], ...] = ()  # a ``join``'s inputs (autograd nodes) and their widths


class Relayout(torch.autograd.Function):
    """``fn`` of the inputs as one autograd node whose name Torch-Pruning reads as elementwise."""

    @staticmethod
    def forward(ctx, fn, *xs):
        ctx.fn, ctx.shapes = fn, [(x.shape, x.dtype, x.device) for x in xs]
        return fn(*xs).clone()

    @staticmethod
    def backward(ctx, grad):  # the analysis never runs it; correct all the same
        with torch.enable_grad():
            xs = [torch.zeros(s, dtype=d, device=v, requires_grad=True) for s, d, v in ctx.shapes]
            return (None, *torch.autograd.grad(ctx.fn(*xs), xs, grad, allow_unused=True))
