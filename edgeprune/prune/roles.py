"""Which layers read the model's inputs and which write its outputs, found by running it once."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

WEIGHT_LAYERS = (nn.modules.conv._ConvNd, nn.Linear, nn.Embedding)


@dataclass(frozen=True)
class LayerRoles:
    """Names of the weight layers at the model's boundaries, and all of them in call order."""

    first: tuple[str, ...]
    last: tuple[str, ...]
    order: tuple[str, ...]

    @property
    def boundary(self) -> frozenset[str]:
        return frozenset(self.first) | frozenset(self.last)


def tensors_in(value) -> list[torch.Tensor]:
    """Returns the tensors in a value: a tensor, or nested tuples, lists and dicts of them."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in tensors_in(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in tensors_in(v)]
    return []


def layer_roles(model: nn.Module, example_inputs: Sequence[torch.Tensor]) -> LayerRoles:
    """Returns the first layers (reading a model input; else the first called) and the last
    layers (whose output is the model's output; else the last called)."""
    names = {m: n for n, m in model.named_modules() if isinstance(m, WEIGHT_LAYERS)}
    inputs = {id(t) for t in example_inputs}
    # outputs are held until the end so that no two recorded tensors can share an id
    calls: list[tuple[str, bool, torch.Tensor | None]] = []

    def hook(module, args, output):
        reads_input = any(id(t) in inputs for t in tensors_in(args))
        out = tensors_in(output)
        calls.append((names[module], reads_input, out[0] if out else None))

    handles = [m.register_forward_hook(hook) for m in names]
    try:
        with torch.no_grad():
            output = model(*example_inputs)
    finally:
        for h in handles:
            h.remove()
    order = tuple(dict.fromkeys(name for name, _, _ in calls))
    if not order:
        return LayerRoles((), (), ())
    first = tuple(dict.fromkeys(name for name, reads, _ in calls if reads)) or (order[0],)
    outputs = {id(t) for t in tensors_in(output)}
    last = tuple(dict.fromkeys(name for name, _, out in calls if out is not None and id(out) in outputs))
    return LayerRoles(first, last or (calls[-1][0],), order)
