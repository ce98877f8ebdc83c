"""The weight matrices that unstructured and N:M sparsity may zero, and the ones left dense.

Each weight is seen as rows (outputs) by columns (inputs) so that criteria can compare
within an output row and N:M blocks can run along the input dimension, whatever the layer's
storage layout (linear, convolution, transposed convolution, embedding).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from edgeprune.prune.roles import LayerRoles

SPARSE_LAYERS = (nn.modules.conv._ConvNd, nn.Linear, nn.Embedding)


@dataclass(eq=False)
class WeightTarget:
    """One weight tensor: its parameter name (as the model's state dict names it) and layer."""

    name: str
    layer_name: str
    module: nn.Module

    @property
    def weight(self) -> nn.Parameter:
        return self.module.weight

    @property
    def in_dim(self) -> int:
        """Returns the axis of ``weight`` that indexes input channels."""
        if isinstance(self.module, nn.modules.conv._ConvNd) and self.module.transposed:
            return 0
        return 1

    def rows(self, values: torch.Tensor) -> torch.Tensor:
        """Returns ``values`` (shaped like the weight) as a (rows, columns) matrix, one row per output."""
        if isinstance(self.module, nn.modules.conv._ConvNd) and self.module.transposed:
            values = values.transpose(0, 1)
        return values.reshape(values.shape[0], -1)

    def from_rows(self, matrix: torch.Tensor) -> torch.Tensor:
        """Returns a (rows, columns) matrix back in the weight's own layout (inverse of rows)."""
        shape = self.weight.shape
        if isinstance(self.module, nn.modules.conv._ConvNd) and self.module.transposed:
            return matrix.reshape(shape[1], shape[0], *shape[2:]).transpose(0, 1)
        return matrix.reshape(shape)

    def input_scale(self, norms: torch.Tensor) -> torch.Tensor:
        """Returns per-input-channel ``norms`` shaped to broadcast against the weight."""
        w = self.weight
        trailing = [1] * (w.dim() - 2)
        if isinstance(self.module, nn.modules.conv._ConvNd) and not self.module.transposed:
            # row o of a grouped weight reads inputs g*in/g ... (g+1)*in/g - 1, g = o // (out/g)
            g = self.module.groups
            table = norms.view(g, -1).repeat_interleave(w.shape[0] // g, dim=0)
            return table.view(w.shape[0], w.shape[1], *trailing)
        if isinstance(self.module, nn.modules.conv._ConvNd):
            return norms.view(-1, 1, *trailing)  # transposed: dim 0 is the input channel
        return norms.view(1, -1)


def parameter_names(model: nn.Module) -> dict[int, str]:
    """Returns id(parameter) -> the name the state dict uses (the first name of a tied one)."""
    return {id(p): n for n, p in model.named_parameters()}


def weight_targets(model: nn.Module, roles: LayerRoles, include_embeddings: bool,
                   include_classifier: bool, only: set[str] | None = None
                   ) -> tuple[list[WeightTarget], list[dict]]:
    """Returns (weights to sparsify, [{name, reason}] of the weights left dense).

    Embeddings and the output layers stay dense unless included; a weight tied between an
    embedding and the output layer stays dense unless both are included. ``only`` limits
    the choice to those layer names.
    """
    names = parameter_names(model)
    first_seen: dict[int, WeightTarget] = {}
    excluded: dict[int, str] = {}
    chosen: set[int] = set()
    for layer_name, module in model.named_modules():
        if not isinstance(module, SPARSE_LAYERS) or not isinstance(getattr(module, "weight", None), nn.Parameter):
            continue
        key = id(module.weight)
        reason = None
        if isinstance(module, nn.Embedding) and not include_embeddings:
            reason = "embedding (kept dense by default)"
        elif layer_name in roles.last and not include_classifier:
            reason = "output layer (kept dense by default)"
            if any(p is module.weight for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()):
                reason = "output layer, tied to the input embedding (kept dense by default)"
        if reason:
            excluded.setdefault(key, reason)
        if only is None or layer_name in only:
            chosen.add(key)
        first_seen.setdefault(key, WeightTarget(names[key], layer_name, module))
    targets = [t for k, t in first_seen.items() if k in chosen and k not in excluded]
    dense = [{"name": first_seen[k].name, "shape": list(first_seen[k].weight.shape), "reason": r}
             for k, r in excluded.items() if k in chosen]
    return targets, dense
