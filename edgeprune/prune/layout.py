"""Where a tensor's channels lie, followed exactly through reshapes, permutes and indexing.

Torch-Pruning guesses a tensor's channel axis from its rank (axis 1 of a 4-D tensor) and maps
indices through a reshape by counting channels on either side. A channels-last tensor (Swin's
windows, LeViT's subsampling), a channel shuffle (ShuffleNet), a channel merged with spatial
axes and split out again (MobileViT's unfolding) or a split into heads (LeViT's fused qkv)
defeats the guess: the counts explode or divide by zero, or a wrong coupling is pruned.

Here a Layout lists the pieces of the channel, most significant first, each a digit of one
axis: ``(axis, inner, size)`` is the axis index's digit ``(index // inner) % size``. A channel
alone on its axis is one piece with inner 1 and the axis' size; a flattened (channel, height,
width) axis holds it with inner height*width. Each op is judged from its exact shapes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

Shape = Sequence[int]
Piece = tuple[int, int, int]  # axis, inner stride within the axis, size

# what a reshape does to the channel
SAME = "same"  # kept as the same pieces (on other axes, or merged with other axes' digits)
SPLIT = "split"  # one piece split over several axes (heads x head width)
MERGE = "merge"  # several pieces merged into one, in their order
LOST = "lost"  # reordered, or cut across: it cannot be followed


@dataclass(frozen=True)
class Layout:
    """The pieces holding the channel (most significant first), whose channels they are, and what
    the one piece was merged from (heads x head width), if it was."""

    pieces: tuple[Piece, ...]
    origin: str | None = None
    merged: tuple[int, ...] = ()

    @classmethod
    def whole(cls, axes: Sequence[int], shape: Shape, origin: str | None = None) -> Layout:
        """Returns the layout of a channel lying whole on ``axes``."""
        return cls(tuple((a, 1, shape[a]) for a in axes), origin)

    @property
    def axes(self) -> tuple[int, ...]:
        return tuple(p[0] for p in self.pieces)

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(p[2] for p in self.pieces)

    def on_axis(self, axis: int, shape: Shape) -> bool:
        """Whether the channel is exactly the whole of ``axis``."""
        return self.pieces == ((axis, 1, shape[axis]),)

    def bare(self) -> Layout:
        return Layout(self.pieces)


def _strides(shape: Shape) -> list[int]:
    out, step = [], 1
    for n in reversed(shape):
        out.append(step)
        step *= n
    return out[::-1]


def reshape(layout: Layout, before: Shape, after: Shape) -> tuple[str, Layout | None, tuple[int, ...]]:
    """Returns what a reshape from ``before`` to ``after`` does to the channel, its layout after,
    and the factors it was split into (SPLIT) or merged from (MERGE)."""
    s_in, s_out = _strides(before), _strides(after)
    out: list[Piece] = []
    for axis, inner, size in layout.pieces:
        if size == 1:
            continue
        low = s_in[axis] * inner
        high = low * size
        for b in sorted(range(len(after)), key=lambda b: -s_out[b]):
            lo, hi = max(low, s_out[b]), min(high, s_out[b] * after[b])
            if after[b] == 1 or lo >= hi:
                continue
            # the piece's digits must be whole digits of the output axis, and the reverse
            if lo % low or high % hi or hi % lo or lo % s_out[b] or (s_out[b] * after[b]) % hi:
                return LOST, None, ()
            piece = (b, lo // s_out[b], hi // lo)
            if out and out[-1][0] == b:
                if out[-1][1] != piece[1] * piece[2]:
                    return LOST, None, ()  # two digits of one axis out of order: a shuffle
                piece = (b, piece[1], out.pop()[2] * piece[2])
            out.append(piece)
    if math.prod(p[2] for p in out) != math.prod(layout.sizes) or len({p[0] for p in out}) < len(out):
        return LOST, None, ()
    sizes = tuple(p[2] for p in layout.pieces if p[2] > 1)
    factors = tuple(p[2] for p in out)
    if factors == sizes:
        return SAME, replace(layout, pieces=tuple(out)), ()
    if len(out) == 1:
        return MERGE, Layout(tuple(out), layout.origin, sizes), sizes
    return SPLIT, Layout(tuple(out), layout.origin), factors


def permute(layout: Layout, dims: Sequence[int]) -> Layout:
    """Returns the layout after ``x.permute(dims)``."""
    where = {d % len(dims): i for i, d in enumerate(dims)}
    return replace(layout, pieces=tuple((where[a], inner, size) for a, inner, size in layout.pieces))


def align(layout: Layout, before: Shape, after: Shape) -> Layout | None:
    """Returns the layout of an op's output that keeps the channel where it was (elementwise ops,
    pooling, a reduction over other axes), aligned from the front or the back; None if the
    channel's axes do not survive."""
    sizes = tuple(before[a] for a in layout.axes)
    for shift in ((0, len(after) - len(before)) if len(after) != len(before) else (0,)):
        axes = tuple(a + shift for a in layout.axes)
        if all(0 <= a < len(after) for a in axes) and tuple(after[a] for a in axes) == sizes:
            return replace(layout, pieces=tuple((a, i, s) for a, (_, i, s) in zip(axes, layout.pieces, strict=True)))
    return None


def index(layout: Layout, shape: Shape, key) -> tuple[Layout | None, list[int], bool]:
    """Returns the layout after ``x[key]``, the input axes that are narrowed by a slice, and
    whether the channel itself is indexed by anything but full slices."""
    key = key if isinstance(key, tuple) else (key,)
    if any(isinstance(k, (torch.Tensor, list)) for k in key) or key.count(Ellipsis) > 1:
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
    return replace(layout, pieces=tuple((where[a], i, s) for a, i, s in layout.pieces)), narrowed, False
