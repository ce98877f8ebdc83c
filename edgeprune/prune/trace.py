"""Following the channel through a model's forward pass while Torch-Pruning traces it.

Every torch function the model calls passes through ``ChannelTracer`` (a TorchFunctionMode),
which keeps the Layout of each activation. Where Torch-Pruning would map an op wrongly, the op
is re-expressed for its trace: a reshape or indexing that keeps the channel becomes one plain
``Relayout`` node (which the tracer passes through as it does an elementwise op), and one that
splits the channel into heads, shuffles it or hides it is a ``Relayout`` node with a verdict
that ``couplings`` turns into an index mapping or a cut. The model computes the same values.
"""

from __future__ import annotations

import math
import weakref
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from edgeprune.prune import layout as lay
from edgeprune.prune.layout import Layout
from edgeprune.prune.relayout import Relayout, Verdict
from edgeprune.prune.roles import tensors_in

RESHAPES = {"view", "reshape", "flatten", "unflatten", "view_as", "reshape_as"}
PERMUTES = {"permute", "transpose", "swapaxes", "swapdims", "movedim", "moveaxis", "t"}
CONCATS = {"cat", "concat", "concatenate"}
SPLITS = {"split", "chunk", "tensor_split", "split_with_sizes", "unbind"}
# ops that reorder or pick along an axis: they break a channel they run along
REORDERS = {"roll", "flip", "index_select", "gather", "take_along_dim", "sort", "cumsum", "cumprod"}
CONVS = {"conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d"}
CHANNEL_FIRST_NORMS = {"batch_norm", "group_norm", "instance_norm"}
CHANNEL_LAST_NORMS = {"layer_norm", "rms_norm"}


@dataclass(frozen=True)
class HeadSplit:
    """A layer's output channels reshaped into ``factors`` (e.g. heads x per-head width)."""

    layer: str
    factors: tuple[int, ...]


def _arg(args, kwargs, position: int, name: str, default=None):
    return args[position] if len(args) > position else kwargs.get(name, default)


class ChannelTracer(TorchFunctionMode):
    """Keeps each activation's Layout during one forward pass and records what the dependency
    graph needs: verdicts of re-expressed ops, heads splits and merges, regrouped convolutions."""

    def __init__(self, model: nn.Module, regrouped: dict[nn.Module, int]) -> None:
        super().__init__()
        self.names = {m: n for n, m in model.named_modules()}
        self.owners: dict[int, list[nn.Module]] = {}
        for m in model.modules():
            for p in m.parameters(recurse=False):
                self.owners.setdefault(id(p), []).append(m)
        self.regrouped_modules = regrouped
        self.running: Counter = Counter()
        self.stack: list[str] = []
        self._layouts: dict[int, tuple[weakref.ref, Layout]] = {}
        self._active: dict[int, weakref.ref] = {}  # the model's inputs and what is computed from them
        self.verdicts: dict[object, Verdict] = {}
        self.regrouped: dict[object, tuple[str, nn.Module]] = {}  # grad_fn -> conv whose groups are its unit
        self.splits: list[HeadSplit] = []
        self.merges: list[HeadSplit] = []  # a layer reading channels merged from factors

    def run(self, model: nn.Module, inputs) -> object:
        """Returns the model's output on ``inputs``, computed under the tracer."""
        def enter(module, args):
            self.running[module] += 1
            self.stack.append(self.names.get(module, ""))

        def leave(module, args, output):
            self.running[module] -= 1
            self.stack.pop()

        handles = [h for m in self.names for h in (m.register_forward_pre_hook(enter), m.register_forward_hook(leave))]
        self._activate(inputs)
        try:
            with self:
                return model(*inputs)
        finally:
            for h in handles:
                h.remove()

    # layouts are kept by tensor identity, without keeping the activations alive
    def layout(self, t) -> Layout | None:
        entry = self._layouts.get(id(t)) if isinstance(t, torch.Tensor) else None
        return entry[1] if entry is not None and entry[0]() is t else None

    def _set(self, t, layout: Layout | None) -> None:
        if isinstance(t, torch.Tensor) and layout is not None:
            self._layouts[id(t)] = (weakref.ref(t), layout)

    def _is_active(self, t: torch.Tensor) -> bool:
        ref = self._active.get(id(t))
        return ref is not None and ref() is t

    def _activate(self, value) -> None:
        for t in tensors_in(value):
            self._active[id(t)] = weakref.ref(t)

    def _where(self) -> str:
        return next((n for n in reversed(self.stack) if n), "the model's forward")

    def _relayout(self, fn: Callable, xs: list[torch.Tensor], verdict: Verdict | None) -> torch.Tensor:
        out = Relayout.apply(fn, *xs)
        if verdict is not None and out.grad_fn is not None:
            self.verdicts[out.grad_fn] = verdict
        return out

    def _cut(self, t: torch.Tensor, reason: str, fn: Callable | None = None, xs: list | None = None) -> torch.Tensor:
        """Returns ``t`` behind a cut; given the op (``fn`` of ``xs``) that made it, the op itself
        becomes the cut, so the dependency graph never maps (or trips on) the op."""
        if not t.requires_grad:
            return t
        verdict = Verdict("cut", f"{reason} (in {self._where()})")
        return self._relayout(fn, xs, verdict) if fn is not None else self._relayout(lambda x: x, [t], verdict)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in CONVS or name == "linear":
            args = self._layer_input(name, args)
        out = func(*args, **kwargs)
        if (name.endswith("_") and not name.startswith("__")) or name.startswith("__i") or name == "__setitem__":
            return out  # in place: the tensor keeps its layout
        if not any(self._is_active(t) for t in tensors_in(args) + tensors_in(kwargs)):
            return self._from_parameters(name, func, args, kwargs, out)
        out = self._observe(name, func, args, kwargs, out)
        self._activate(out)
        return out

    def _observe(self, name, func, args, kwargs, out):
        if not any(t.requires_grad for t in tensors_in(out)):
            first = args[0] if args else None
            if isinstance(out, torch.Tensor) and isinstance(first, torch.Tensor) and (known := self.layout(first)):
                self._set(out, lay.align(known, first.shape, out.shape))
            return out
        return self._follow(name, func, args, kwargs, out)

    def _from_parameters(self, name, func, args, kwargs, out):
        """A tensor computed from parameters alone (a layer scale reshaped to broadcast, a table of
        position biases) carries the parameter's channel as the dependency graph sees it: its
        reshapes are passed through as they are for any unwrapped parameter, never guessed at."""
        if name in RESHAPES and args[0].requires_grad:
            return self._relayout(lambda t: func(t, *args[1:], **kwargs), [args[0]], None)
        return out

    def _layer_input(self, name: str, args):
        """A weight layer must read the channel on its own channel axis; a coupling into it through
        another axis (a token-mixing linear, talking heads over attention scores) is cut."""
        x = args[0]
        known = self.layout(x)
        axis = x.dim() - 1 if name == "linear" else 1
        if known is None or known.on_axis(axis, x.shape) or math.prod(known.sizes) == 1:
            return args
        if known.axes == (axis,):  # one digit of the layer's inputs: a flattened channel
            _, inner, size = known.pieces[0]
            spread = Verdict("spread", "", inner, size, x.shape[axis])
            return (self._relayout(lambda t: t, [x], spread), *args[1:])
        return (self._cut(x, "a layer reads the channel on another axis, or spread over several"), *args[1:])

    def _follow(self, name, func, args, kwargs, out):
        first = args[0] if args else None
        known = self.layout(first)
        if name in CONVS or name in ("linear", "embedding"):
            return self._layer(name, args, kwargs, out)
        if name in CHANNEL_FIRST_NORMS or name in CHANNEL_LAST_NORMS:
            axis = 1 if name in CHANNEL_FIRST_NORMS else out.dim() - 1
            origin = known.origin if known and known.on_axis(axis, out.shape) else None
            self._set(out, Layout.whole((axis,), out.shape, origin))
            return out
        if name in RESHAPES:
            return self._reshape(func, args, kwargs, out, known)
        if name in PERMUTES and known is not None:
            strides = [7 ** i for i in range(first.dim())]  # distinct strides show where each axis went
            moved = func(torch.empty_strided(first.shape, strides, device="meta"), *args[1:], **kwargs).stride()
            self._set(out, lay.permute(known, [strides.index(s) for s in moved]))
            return out
        if name == "__getitem__":
            return self._index(first, args[1], out, known)
        if name in CONCATS:
            return self._concat(args, kwargs, out)
        if name in SPLITS:
            return self._split(name, args, kwargs, out, known)
        if name in ("matmul", "__matmul__", "bmm"):
            known = self._matmul(args[0], args[1], out)
            if args[0].dim() > 2 or args[1].dim() > 2:  # its batched form reshapes inside, which the graph would map
                out = self._relayout(lambda a, b: func(a, b), [args[0], args[1]], None)
            self._set(out, known)
            return out
        if name == "scaled_dot_product_attention":
            value = _arg(args, kwargs, 2, "value")
            if (v := self.layout(value)) is not None:
                self._set(out, lay.align(v, value.shape, out.shape))
            return out
        if name == "einsum":  # followed nowhere; its inner reshapes are kept from the graph
            return self._relayout(lambda *ts: func(args[0], *ts), tensors_in(args[1:]), None)
        if name in REORDERS and known is not None:
            dims = _arg(args, kwargs, 2 if name == "roll" else 1, "dims" if name in ("roll", "flip") else "dim")
            dims = [dims] if isinstance(dims, int) else list(dims) if dims is not None else list(range(first.dim()))
            if any(d % first.dim() in known.axes for d in dims):
                return self._cut(out, f"{name} reorders the channel")
        return self._elementwise(name, args, kwargs, out)

    def _layer(self, name, args, kwargs, out):
        weight = _arg(args, kwargs, 1, "weight")
        owners = self.owners.get(id(weight), [])
        running = [m for m in owners if self.running[m] > 0]
        owner = (running or owners or [None])[0]
        layer = self.names.get(owner) if owner is not None else None
        x = args[0]
        if name != "embedding" and (known := self.layout(x)) is not None and known.merged and layer:
            self.merges.append(HeadSplit(layer, known.merged))
        if owner in self.regrouped_modules and out.grad_fn is not None:
            self.regrouped[out.grad_fn] = (layer, owner)
        axis = 1 if name in CONVS else out.dim() - 1
        if owners and not running:  # a layer's weight read by a function outside the layer (torchvision's Swin)
            out = self._cut(out, f"the weight of {layer} is used outside its layer")
            layer = None
        self._set(out, Layout.whole((axis,), out.shape, layer))
        return out

    def _reshape(self, func, args, kwargs, out, known):
        x = args[0]
        verdict, after, info = (lay.LOST, None, ()) if known is None else lay.reshape(known, x.shape, out.shape)
        where = self._where()
        if verdict == lay.SPLIT and known.origin and len(known.pieces) == 1:
            self.splits.append(HeadSplit(known.origin, info))
        message = None
        if verdict in (lay.SPLIT, lay.MERGE):
            how = "split into" if verdict == lay.SPLIT else "merged from"
            message = Verdict("heads", f"its channels are {how} {'x'.join(map(str, info))} by a reshape in {where}")
        elif verdict == lay.LOST:
            message = Verdict("cut", f"a reshape in {where} reorders or hides its channels")
        new = self._relayout(lambda t: func(t, *args[1:], **kwargs), [x], message)
        self._set(new, after)
        return new

    def _index(self, x, key, out, known):
        if known is None:
            return out
        after, narrowed, touched = lay.index(known, x.shape, key)
        if touched:
            single = len(narrowed) == 1 and known.on_axis(narrowed[0], x.shape) \
                and all(isinstance(k, slice) for k in (key if isinstance(key, tuple) else (key,)))
            if single and (x.dim(), narrowed[0]) in ((4, 1), (3, 2)):  # a channel slice the dependency graph maps
                self._set(out, Layout.whole(known.axes, out.shape))
                return out
            return self._cut(out, "indexing picks channels in a way the dependency graph cannot map",
                             lambda t: t[key], [x])
        if narrowed:  # a slice of other axes: the dependency graph would read it as a channel slice on some ranks
            out = self._relayout(lambda t: t[key], [x], None)
        self._set(out, after)
        return out

    def _concat(self, args, kwargs, out):
        xs = list(_arg(args, kwargs, 0, "tensors"))
        dim = _arg(args, kwargs, 1, "dim", 0) % out.dim()
        # parameters joined in (a class token) carry the channel as the graph sees them
        layouts = [self.layout(t) for t in xs if self._is_active(t)]
        if any(k is None for k in layouts):
            return self._cut(out, "a concatenation of tensors whose channels were not followed",
                             lambda *ts: torch.cat(ts, dim), xs)
        if len({k.pieces for k in layouts}) > 1:
            return self._cut(out, "a concatenation joins tensors whose channels lie apart",
                             lambda *ts: torch.cat(ts, dim), xs)
        known = layouts[0]
        if dim in known.axes:
            nodes = [t.grad_fn for t in xs]
            if dim == 1 and known.on_axis(1, xs[0].shape):  # the dependency graph maps this one itself
                pass
            elif known.on_axis(dim, xs[0].shape) and None not in nodes and len(set(nodes)) == len(nodes):
                # channels last (Swin's patch merging): offsets the couplings keep up to date
                join = Verdict("join", "", parts=tuple((n, t.shape[dim]) for n, t in zip(nodes, xs, strict=True)))
                out = self._relayout(lambda *ts: torch.cat(ts, dim), xs, join)
            else:
                return self._cut(out, "a concatenation along the channel on an axis the dependency graph cannot map",
                                 lambda *ts: torch.cat(ts, dim), xs)
            self._set(out, Layout.whole((dim,), out.shape))
            return out
        # a join of tokens is no join of channels: kept from the graph, which reads axis 1 (or a
        # negative axis) as the channel
        out = self._relayout(lambda *ts: torch.cat(ts, dim), xs, None)
        self._set(out, known.bare())
        return out

    def _split(self, name, args, kwargs, out, known):
        x = args[0]
        dim = (_arg(args, kwargs, 1, "dim", 0) if name == "unbind" else _arg(args, kwargs, 2, "dim", 0)) % x.dim()
        outs = list(out)
        followed = known is not None
        known = known or Layout.whole((dim,), x.shape)  # not followed here: cut as a split of the channel
        if name == "unbind":
            shifted = Layout(tuple((a - (a > dim), i, s) for a, i, s in known.pieces if a != dim))
            if dim in known.axes and not (known.pieces[0][:2] == (0, 1) and len(known.pieces) > 1):
                return type(out)(self._cut(o, "unbinding the channel", lambda t, i=i: t.select(dim, i), [x])
                                 for i, o in enumerate(outs))
            if dim not in known.axes:
                outs = [self._relayout(lambda t, i=i: t.select(dim, i), [x], None) for i in range(len(outs))]
            for o in outs:
                self._set(o, shifted)
            return type(out)(outs)
        starts = [0]
        for o in outs:
            starts.append(starts[-1] + o.shape[dim])
        pieces = [lambda t, a=a, b=b: t.narrow(dim, a, b - a) for a, b in zip(starts, starts[1:], strict=False)]
        if dim in known.axes and (dim != 1 or not known.on_axis(1, x.shape) or not followed):
            outs = [self._cut(o, "a split of the channel the dependency graph cannot map", piece, [x])
                    for o, piece in zip(outs, pieces, strict=True)]
        elif dim not in known.axes:  # a split of tokens, which the graph could read as one of channels
            outs = [self._relayout(piece, [x], None) for piece in pieces]
        for o in outs:  # each part keeps its share of the split axis
            self._set(o, Layout(tuple((a, i, o.shape[a] if a == dim and i == 1 else s) for a, i, s in known.pieces)))
        return type(out)(outs)

    def _matmul(self, a, b, out) -> Layout | None:
        """The right operand's channel survives unless it lies on the contracted axis; else the left's."""
        for t, contracted in ((b, b.dim() - 2), (a, a.dim() - 1)):
            known = self.layout(t)
            if known is not None and t.dim() >= 2 and contracted not in known.axes:
                return lay.align(known, t.shape, out.shape)
        return None

    def _elementwise(self, name, args, kwargs, out):
        inputs = [t for t in tensors_in(args) + tensors_in(kwargs) if self.layout(t) is not None]
        outs = [out] if isinstance(out, torch.Tensor) else list(out) if isinstance(out, (tuple, list)) else []
        results = []
        for o in outs:
            if not isinstance(o, torch.Tensor) or not o.requires_grad:
                results.append(o)
                continue
            aligned, lost = set(), False
            for t in inputs:
                known = self.layout(t)
                if math.prod(known.sizes) == 1:
                    continue  # a single channel broadcasts over any
                moved = lay.align(known, t.shape, o.shape)
                if moved is None:
                    lost = True
                else:
                    aligned.add(moved)
            if len({k.pieces for k in aligned}) > 1 or (lost and not aligned):
                o = self._cut(o, f"{name or 'an op'} mixes or changes the channel")
            elif aligned:  # one input's layout whole; of several different ones only the pieces
                self._set(o, aligned.pop() if len(aligned) == 1 else next(iter(aligned)).bare())
            results.append(o)
        if isinstance(out, torch.Tensor):
            return results[0]
        if all(r is o for r, o in zip(results, outs, strict=True)):
            return out
        return type(out)(results)
