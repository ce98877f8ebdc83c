"""The pruning verb: ``prune(model, config)``, dispatched through a registry of handlers.

Adding a method means adding a config dataclass and a handler registered for it; nothing
else changes (as torchao's ``quantize_`` does for quantization methods).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from edgeprune.errors import InputError
from edgeprune.prune.config import CALIBRATED_CRITERIA

Batch = Sequence[torch.Tensor]


@dataclass
class PruneResult:
    """What pruning produced.

    model: the pruned model (use it, not the model passed in).
    masks: parameter name -> bool tensor (True = kept) for unstructured and N:M sparsity,
        which recovery re-applies after every step; empty for structured pruning.
    details: JSON-serialisable facts for the report's ``strategy.details``: per-layer
        results, layers left dense and why, the hybrid split, the criterion used.
    """

    model: nn.Module
    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)


Handler = Callable[[nn.Module, Any, "list[tuple[torch.Tensor, ...]] | None", tuple], PruneResult]
_HANDLERS: dict[type, Handler] = {}


def register_pruner(config_type: type) -> Callable[[Handler], Handler]:
    """Returns a decorator that registers ``handler(model, config, calibration, example_inputs)``
    as the way to apply configs of ``config_type``."""

    def decorator(handler: Handler) -> Handler:
        _HANDLERS[config_type] = handler
        return handler

    return decorator


def needs_calibration(config: Any) -> str | None:
    """Returns the criterion of the config that reads calibration data, or None."""
    for name in ("criterion", "unstructured_criterion"):
        value = getattr(config, name, None)
        if value in CALIBRATED_CRITERIA:
            return value
    return None


def prune(model: nn.Module, config: Any, calibration: Iterable[Batch] | None = None,
           example_inputs: Sequence[torch.Tensor] | None = None) -> PruneResult:
    """Returns the pruned model with its masks and report details.

    The model passed in is left as it is: pruning works on a deep copy (tied parameters stay
    tied in the copy). ``example_inputs`` are needed to trace the model for structured and
    hybrid pruning and to find its first and last layers; when None, the first calibration
    batch is used. Calibration data is required by the ``taylor`` and ``wanda`` criteria.
    """
    handler = _HANDLERS.get(type(config))
    if handler is None:
        known = ", ".join(sorted(t.__name__ for t in _HANDLERS))
        raise InputError(f"no pruning method for {type(config).__name__}; known configs: {known}")
    batches = [tuple(b) if not isinstance(b, torch.Tensor) else (b,) for b in calibration] if calibration else None
    criterion = needs_calibration(config)
    if criterion and not batches:
        raise InputError(f"criterion {criterion} needs calibration data, but the workload has none; "
                         "give Workload(calibration=...) or pick a magnitude criterion")
    if example_inputs is None:
        if not batches:
            raise InputError("pruning needs example_inputs or calibration data to run the model")
        example_inputs = batches[0]
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    model = copy_model(model).eval()
    result = handler(model, config, batches, tuple(example_inputs))
    result.model.eval()
    result.details.setdefault("config", _config_dict(config))
    return result


def copy_model(model: nn.Module) -> nn.Module:
    """Returns a deep copy of the model, tied parameters still tied.

    Tensors a module caches between calls (LeViT keeps its attention biases, computed in an
    earlier forward pass, as non-leaf tensors) cannot be deep-copied: they are copied detached.
    """
    memo: dict[int, Any] = {}
    for module in model.modules():
        for value in _cached_values(vars(module)):
            if isinstance(value, torch.Tensor) and not isinstance(value, nn.Parameter) and not value.is_leaf:
                memo[id(value)] = value.detach().clone()
    return copy.deepcopy(model, memo)


def _cached_values(value: Any, depth: int = 0):
    """Yields the tensors in a module's attributes, inside dicts, lists and tuples."""
    if depth > 3:
        return
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _cached_values(v, depth + 1)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _cached_values(v, depth + 1)


def _config_dict(config: Any) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(config).items()}
