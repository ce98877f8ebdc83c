"""Tied parameters (one Parameter used by several modules), and tying them again after pruning.

Pruning functions replace a module's weight with a new, smaller Parameter, so two modules
that shared one (an input embedding and its tied output projection) each end up with
their own copy. Restoring the tie keeps the pruned model as compact as the original and
keeps later training of the two in step.
"""

from __future__ import annotations

import torch
from torch import nn

from edgeprune.errors import UnsupportedError

Slot = tuple[nn.Module, str]


def tied_parameters(model: nn.Module) -> list[list[Slot]]:
    """Returns, for every parameter held by more than one (module, attribute) slot, its slots."""
    slots: dict[int, list[Slot]] = {}
    for module in model.modules():
        for attr, param in module.named_parameters(recurse=False):
            slots.setdefault(id(param), []).append((module, attr))
    return [s for s in slots.values() if len(s) > 1]


def restore_ties(ties: list[list[Slot]]) -> None:
    """Makes every slot of each tie hold the same Parameter again (they must agree in value)."""
    for slots in ties:
        params = [getattr(m, attr) for m, attr in slots]
        first = params[0]
        for (module, attr), param in zip(slots[1:], params[1:], strict=True):
            if param is first:
                continue
            if param.shape != first.shape or not torch.equal(param.detach(), first.detach()):
                raise UnsupportedError(
                    f"tied parameter {type(module).__name__}.{attr} was pruned differently from its twin "
                    f"({tuple(param.shape)} vs {tuple(first.shape)})"
                )
            setattr(module, attr, first)
