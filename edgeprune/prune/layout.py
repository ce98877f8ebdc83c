"""Where a tensor's channels lie, followed exactly through reshapes, permutes and indexing.

Torch-Pruning guesses a tensor's channel axis from its rank (axis 1 of a 4-D tensor) and maps
indices through a reshape by counting channels on either side. A channels-last tensor (Swin's
windows, LeViT's subsampling), a channel shuffle (ShuffleNet) or a split into heads (LeViT's
fused qkv) defeats the guess: the counts explode or divide by zero, or a wrong coupling is
pruned. Here a Layout names the axes that hold the channel, most significant first, and each
op is judged from its exact shapes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

Shape = Sequence[int]

# what a reshape does to the channel
SAME = "same"  # kept on one axis, or kept as the same factors
SPLIT = "split"  # one channel axis split over several (heads x head width)
MERGE = "merge"  # several channel axes merged into one, in their order
FLATTEN = "flatten"  # merged with the axes after it: channel c becomes c*k .. c*k+k-1
LOST = "lost"  # reordered, merged under another axis or cut across: it cannot be followed


@dataclass(frozen=True)
class Layout:
    """The axes holding the channel (most significant first), whose channels they are, and what
    the one channel axis was merged from (heads x head width), if it was."""

    axes: tuple[int, ...]
    origin: str | None = None
    merged: tuple[int, ...] = ()

    def sizes(self, shape: Shape) -> tuple[int, ...]:
        return tuple(shape[a] for a in self.axes)


def _strides(shape: Shape) -> list[int]:
    out, step = [], 1
    for n in reversed(shape):
        out.append(step)
        step *= n
    return out[::-1]


def reshape(layout: Layout, before: Shape, after: Shape) -> tuple[str, Layout | None, tuple[int, ...] | int]:
    """Returns what a reshape from ``before`` to ``after`` does to the channel, its layout after,
    and the factors it was split into (SPLIT), merged from (MERGE) or the flatten stride."""
    axes = [a for a in layout.axes if before[a] > 1]
    if not axes:
        return LOST, None, ()
    sizes = tuple(before[a] for a in axes)
    s_in, s_out = _strides(before), _strides(after)
    if not all(s_in[a] == s_in[b] * before[b] for a, b in zip(axes, axes[1:], strict=False)):
        # a reordered channel (a shuffle's transpose) is followed only if every axis of it stays whole
        moved = []
        for a in axes:
            match = [b for b in range(len(after)) if after[b] == before[a] and s_out[b] == s_in[a]]
            if len(match) != 1:
                return LOST, None, ()
            moved.append(match[0])
        return SAME, replace(layout, axes=tuple(moved)), ()
    low = s_in[axes[-1]]
    high = low * math.prod(sizes)
    inside = sorted((b for b in range(len(after)) if after[b] > 1 and s_out[b] >= low
                     and s_out[b] * after[b] <= high), key=lambda b: -s_out[b])
    factors = tuple(after[b] for b in inside)
    if inside and math.prod(factors) == math.prod(sizes):
        if len(inside) == 1:
            if len(axes) == 1:
                return SAME, replace(layout, axes=(inside[0],)), ()
            return MERGE, Layout((inside[0],), layout.origin, sizes), sizes
        if factors == sizes:
            return SAME, replace(layout, axes=tuple(inside)), ()
        return SPLIT, Layout(tuple(inside), layout.origin), factors
    around = [b for b in range(len(after)) if s_out[b] < low and s_out[b] * after[b] == high]
    if len(around) == 1 and len(axes) == 1:
        return FLATTEN, None, low // s_out[around[0]]
    return LOST, None, ()


def permute(layout: Layout, dims: Sequence[int]) -> Layout:
    """Returns the layout after ``x.permute(dims)``."""
    where = {d % len(dims): i for i, d in enumerate(dims)}
    return replace(layout, axes=tuple(where[a] for a in layout.axes))


def align(layout: Layout, before: Shape, after: Shape) -> Layout | None:
    """Returns the layout of an op's output that keeps the channel where it was (elementwise ops,
    pooling, a reduction over other axes), aligned from the front or the back; None if the
    channel's sizes do not survive."""
    sizes = layout.sizes(before)
    if all(a < len(after) for a in layout.axes) and tuple(after[a] for a in layout.axes) == sizes:
        if len(after) == len(before):
            return layout
    shift = len(after) - len(before)
    back = tuple(a + shift for a in layout.axes)
    if all(0 <= a < len(after) for a in back) and tuple(after[a] for a in back) == sizes:
        return replace(layout, axes=back)
    if all(a < len(after) for a in layout.axes) and tuple(after[a] for a in layout.axes) == sizes:
        return layout
    return None


def index(layout: Layout, shape: Shape, key) -> tuple[Layout | None, list[int], bool]:
    """Returns the layout after ``x[key]``, the input axes that are narrowed by a slice, and
    whether the channel itself is indexed by anything but full slices."""
    key = key if isinstance(key, tuple) else (key,)
    if any(isinstance(k, (torch.Tensor, list)) or k is Ellipsis and key.count(Ellipsis) > 1 for k in key):
        return None, [], True  # advanced indexing: followed nowhere
    used = sum(1 for k in key if k is not None and k is not Ellipsis)
    expanded: list = []
    for k in key:
        expanded.extend([slice(None)] * (len(shape) - used) if k is Ellipsis else [k])
    expanded.extend([slice(None)] * (len(shape) - sum(1 for k in expanded if k is not None)))
    axis, new_axis, where, narrowed, touched = 0, 0, {}, [], False
    for k in expanded:
        if k is None:
            new_axis += 1
            continue
        if isinstance(k, slice):
            if k != slice(None) and range(shape[axis])[k] != range(shape[axis]):
                narrowed.append(axis)
                touched |= axis in layout.axes
            where[axis] = new_axis
            new_axis += 1
        else:  # an integer drops the axis
            touched |= axis in layout.axes
        axis += 1
    if touched:
        return None, narrowed, True
    return replace(layout, axes=tuple(where[a] for a in layout.axes)), narrowed, False
