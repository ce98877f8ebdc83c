"""Structured pruning: remove whole channels, neurons and heads, leaving a smaller dense model."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from edgeprune.errors import InputError, UnsupportedError, first_line
from edgeprune.prune.allocation import Budget, allocate
from edgeprune.prune.api import PruneResult, copy_model, register_pruner
from edgeprune.prune.attention import rewrite_multihead_attention
from edgeprune.prune.calibration import input_norms, taylor_gradients
from edgeprune.prune.config import StructuredConfig
from edgeprune.prune.fused_heads import fused_head_groups
from edgeprune.prune.groups import ROOT_TYPES, Analysis, ChannelGroup, build_graph, coupled_groups
from edgeprune.prune.heads import AttentionModule, find_attention
from edgeprune.prune.importance import scorer
from edgeprune.prune.roles import layer_roles
from edgeprune.prune.ties import restore_ties, tied_parameters

Batch = tuple[torch.Tensor, ...]
# How long the channel-dependency analysis may take before the model is given up on (not hung on).
GRAPH_ANALYSIS_S = 120
# layers that must keep their shape entirely, with the reason, chosen per call (hybrid uses it)
Avoid = Callable[[nn.Module, list[AttentionModule]], dict[nn.Module, str]]


# How many times a pruned model that no longer runs is pruned again with the failing layer kept
MAX_REPAIRS = 8


class _BrokenForward(Exception):
    def __init__(self, message: str, module: str | None) -> None:
        super().__init__(message)
        self.module = module  # the innermost module whose forward failed, if any


@register_pruner(StructuredConfig)
def _handle(model: nn.Module, config: StructuredConfig, calibration: list[Batch] | None,
            example_inputs: Batch) -> PruneResult:
    return prune_structured(model, config, calibration, example_inputs)


def prune_structured(model: nn.Module, config: StructuredConfig, calibration: list[Batch] | None,
                     example_inputs: Batch, avoid: Avoid | None = None) -> PruneResult:
    """Returns the model with channels, neurons and heads removed, and what was removed.

    nn.MultiheadAttention is first rewritten into ExplicitAttention so its heads can go.
    If the pruned model no longer runs (a reshape to a fixed width, a coupling the tracer
    mapped wrongly), the layer whose forward failed is found and pruning is redone with it
    kept whole (its attention's heads kept, for a failure inside attention); the details say
    which layers and why. A failure that persists is an UnsupportedError naming the layer.
    """
    rewritten = rewrite_multihead_attention(model)
    if config.criterion == "bn_scale" and not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        raise InputError("criterion bn_scale needs BatchNorm layers, and the model has none; use l2 or taylor")
    original = copy_model(model)
    reference = _output_shapes(model, example_inputs)
    repairs = Repairs()
    for _ in range(MAX_REPAIRS + 1):
        try:
            details = _prune(model, config, calibration, example_inputs, avoid, repairs)
            _check_forward(model, example_inputs, reference)
            break
        except _BrokenForward as err:
            if not repairs.add(err, find_attention(original)):
                at = f" at {err.module}" if err.module else ""
                raise UnsupportedError(f"structured pruning broke the model's forward pass{at}: {err}; "
                                       "name the layer in ignore") from None
            model = copy_model(original)
    else:
        raise UnsupportedError(f"structured pruning broke the model's forward pass after keeping "
                               f"{', '.join(repairs.whole)} whole; name the failing layers in ignore")
    details["attention_rewritten"] = rewritten
    return PruneResult(model=model, details=details)


@dataclass
class Repairs:
    """What a pruned model that failed to run keeps on the next try: attention heads, then whole layers."""

    heads: dict[str, str] = field(default_factory=dict)  # attention module name -> reason
    whole: dict[str, str] = field(default_factory=dict)  # module name -> reason
    stream: str | None = None  # why the width the first layers open (a residual stream) is kept

    def add(self, err: _BrokenForward, attention: list[AttentionModule]) -> bool:
        """Records what to keep after ``err``; False when nothing new can be kept.

        A failure in the model's own forward, outside every layer, is a reshape of the model's
        to a width it holds as a number (torchvision's ViT reshapes its patch embedding to
        ``hidden_dim``): the width the first layers open is kept on the next try.
        """
        if err.module is None:
            if self.stream is not None:
                return False
            self.stream = f"the width the first layers open is kept: the model failed to run with it pruned ({err})"
            return True
        owner = next((a.name for a in attention if err.module == a.name or err.module.startswith(a.name + ".")), None)
        if owner is not None and owner not in self.heads:
            self.heads[owner] = f"heads kept: the model failed to run after head pruning ({err})"
            return True
        site = owner or err.module
        if site in self.whole:
            return False
        self.whole[site] = f"kept whole: the model failed to run with it pruned ({err})"
        return True


def _prune(model: nn.Module, config: StructuredConfig, calibration: list[Batch] | None,
           example_inputs: Batch, avoid: Avoid | None, repairs: Repairs) -> dict[str, Any]:
    modules = dict(model.named_modules())
    roles = layer_roles(model, example_inputs)
    protected: dict[nn.Module, str] = {}
    for name in config.ignore:
        if name not in modules:
            raise InputError(f"ignore names {name!r}, which is not a module of the model")
        # a block or attention module named in ignore keeps the outputs of everything inside it
        for inner in modules[name].modules():
            protected[inner] = f"{name} is in ignore"
    # a first layer keeps its width only where that costs one layer's width, not a residual stream
    stems = {modules[name]: f"first layer {name} is protected" for name in roles.first} if config.protect_first_last else {}
    for name in roles.last:
        protected.setdefault(modules[name], f"output layer {name} keeps the output width")
    if repairs.stream is not None:
        for name in roles.first:
            protected.setdefault(modules[name], repairs.stream)
    attention = find_attention(model)
    avoided = avoid(model, attention) if avoid else {}
    for name, reason in repairs.whole.items():
        avoided.update({inner: f"{name} {reason}" for inner in modules[name].modules()})
    score = scorer(
        config.criterion,
        grads=taylor_gradients(model, calibration) if config.criterion == "taylor" else None,
        norms=input_norms(model, calibration, _weight_layers(model)) if config.criterion == "wanda" else None,
    )
    ties = tied_parameters(model)
    try:
        with time_limit(GRAPH_ANALYSIS_S):
            analysis = build_graph(model, example_inputs, attention)
            groups = coupled_groups(analysis, model, attention, protected, avoided, stems)
            groups = fused_head_groups(groups, analysis, attention, model, avoided)
    except AnalysisTimeout:
        raise UnsupportedError(f"the channel-dependency analysis of the model did not finish in {GRAPH_ANALYSIS_S} s; "
                               "prune it unstructured or N:M instead (a transformers causal LM, however wrapped, "
                               "is pruned block by block by `edgeprune build`)") from None
    except Exception as exc:  # the tracer fails in many ways on models it cannot follow
        raise UnsupportedError(f"cannot trace the model's channel dependencies for structured pruning: "
                               f"{first_line(exc, 200, named=True)}") from exc
    for g in groups:
        if g.is_heads and g.attention.name in repairs.heads:
            g.skip = repairs.heads[g.attention.name]
    scored, unit_scores = [], []
    for g in [g for g in groups if g.skip is None]:
        try:  # scoring walks the dependency library's groups too, and fails on couplings it cannot follow
            found = score(g)
            unit_scores.append(g.unit_scores(found[0]))
            scored.append(found)
        except Exception as exc:  # nothing is changed yet: the group is kept whole, and the report says why
            g.skip = f"kept whole: its channels could not be scored ({first_line(exc, 200, named=True)})"
    active = [g for g in groups if g.skip is None]
    budgets = [Budget(g.units, g.unit_size, s) for g, s in zip(active, unit_scores, strict=True)]
    kept = allocate(budgets, config.sparsity, config.allocation, config.max_layer_sparsity, config.channel_multiple)

    report = []
    for g, (_, used), units_score, keep in zip(active, scored, unit_scores, kept, strict=True):
        removed_units = sorted(torch.argsort(units_score, descending=True)[keep:].tolist())
        entry = {**g.describe(), "channels_after": keep * g.unit_size, "criterion": used}
        if g.is_heads:
            entry.update(attention=g.attention.name, heads=g.units, heads_after=keep)
        report.append(entry)
        if not removed_units:
            continue
        # the widths of its layers before: an attention's attribute equal to one is an inner width
        widths = frozenset(len(m.idxs) for m in g.members if isinstance(m.module, ROOT_TYPES))
        if not _prune_group(analysis, g, removed_units):  # it would empty a coupled layer: nothing was removed
            g.skip = "kept whole: removing its channels would remove every channel of a coupled layer"
            entry["channels_after"] = entry["channels"]
            continue
        if g.is_heads:
            g.attention.remove_heads(removed_units, widths)
    restore_ties(ties)
    _drop_caches(model)
    before = sum(e["channels"] for e in report)
    after = sum(e["channels_after"] for e in report)
    return {
        "kind": "structured",
        "criterion": config.criterion,
        "allocation": config.allocation,
        "target_sparsity": config.sparsity,
        "channel_multiple": config.channel_multiple,
        "channels_before": before,
        "channels_after": after,
        "channel_sparsity": round(1 - after / before, 4) if before else 0.0,
        "groups": report,
        "kept_whole": [{"layers": g.names, "reason": g.skip} for g in groups if g.skip],
        "first_layers": list(roles.first),
        "last_layers": list(roles.last),
    }


def _prune_group(analysis: Analysis, group: ChannelGroup, removed_units: list[int]) -> bool:
    """Removes the units' channels from every layer of the group; False, changing nothing, where that
    would remove every channel of a layer coupled to it."""
    graph = analysis.graph
    try:
        if group.parts:  # layers pruned each by itself (fused_heads); a kept unit keeps each non-empty
            for layer, fn, per_unit in group.parts:
                fn(layer, sorted(c for u in removed_units for c in per_unit[u]))
            return True
        idxs = sorted(c for u in removed_units for c in group.unit_channels(u))
        pruning = graph.get_pruning_group(group.root, group.handler, idxs)
        if not graph.check_pruning_group(pruning):
            return False
        analysis.couplings.prune(pruning)
    except Exception as exc:  # a layer type or coupling the pruning functions cannot handle
        raise UnsupportedError(f"cannot prune the group of {', '.join(group.names[:3])}: "
                               f"{first_line(exc, 200, named=True)}; name a layer in ignore") from exc
    return True


def _drop_caches(model: nn.Module) -> None:
    """Has every module drop what it caches from its parameters (LeViT's and EfficientFormer's
    attention biases, cleared by their ``train()``, by Hugging Face's only when training
    starts), keeping each module's mode."""
    modes = {m: m.training for m in model.modules()}
    model.train(True)
    model.train(False)
    for m, mode in modes.items():
        m.training = mode


class AnalysisTimeout(Exception):
    """The dependency analysis ran past its time limit."""


@contextlib.contextmanager
def time_limit(seconds: int):
    """Raises AnalysisTimeout in the block after ``seconds`` (main thread on POSIX; elsewhere no limit)."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def expire(signum, frame):
        raise AnalysisTimeout

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _weight_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))]


def _shapes(value) -> Any:
    if isinstance(value, torch.Tensor):
        return tuple(value.shape)
    if isinstance(value, (tuple, list)):
        return [_shapes(v) for v in value]
    if isinstance(value, dict):
        return {k: _shapes(v) for k, v in value.items()}
    return None


def _output_shapes(model: nn.Module, example_inputs: Sequence[torch.Tensor]) -> Any:
    with torch.no_grad():
        return _shapes(model(*example_inputs))


def _check_forward(model: nn.Module, example_inputs: Sequence[torch.Tensor], reference: Any) -> None:
    names = {m: n for n, m in model.named_modules() if n}
    stack: list[str] = []
    failed: list[str] = []

    def enter(module, args):
        stack.append(names[module])

    def leave(module, args, output):
        stack.pop()

    handles = [h for m in names for h in (m.register_forward_pre_hook(enter), m.register_forward_hook(leave))]
    try:
        shapes = _output_shapes(model, example_inputs)
    except Exception as exc:  # any failure of the user's forward after pruning
        failed.append(stack[-1] if stack else "")
        raise _BrokenForward(f"{first_line(exc, 200, named=True)}", failed[0] or None) from exc
    finally:
        for h in handles:
            h.remove()
    if shapes != reference:
        raise _BrokenForward(f"output shape changed from {reference} to {shapes}", None)
