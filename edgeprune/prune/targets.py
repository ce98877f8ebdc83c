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
    transposed: bool = False  # a transposed convolution's weight: (in, out, ...)

    @property
    def weight(self) -> nn.Parameter:
        return self.module.weight

    @property
    def in_dim(self) -> int:
        """Returns the axis of ``weight`` that indexes input channels."""
        return 0 if self.transposed else 1

    def rows(self, values: torch.Tensor) -> torch.Tensor:
        """Returns ``values`` (shaped like the weight) as a (rows, columns) matrix, one row per output."""
        if self.transposed:
            values = values.transpose(0, 1)
        return values.reshape(values.shape[0], -1)

    def from_rows(self, matrix: torch.Tensor) -> torch.Tensor:
        """Returns a (rows, columns) matrix back in the weight's own layout (inverse of rows)."""
        shape = self.weight.shape
        if self.transposed:
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
        transposed = isinstance(module, nn.modules.conv._ConvNd) and module.transposed
        first_seen.setdefault(key, WeightTarget(names[key], layer_name, module, transposed))
    for layer_name, holder, transposed, last in graph_layers(model):
        key = id(holder.weight)
        if last and not include_classifier:
            excluded.setdefault(key, "output layer (kept dense by default)")
        if only is None or layer_name in only:
            chosen.add(key)
        first_seen.setdefault(key, WeightTarget(names[key], layer_name, holder, transposed))
    targets = [t for k, t in first_seen.items() if k in chosen and k not in excluded]
    dense = [{"name": first_seen[k].name, "shape": list(first_seen[k].weight.shape), "reason": r}
             for k, r in excluded.items() if k in chosen]
    return targets, dense


# the operators of an exported graph whose second argument is a convolution's or a linear layer's weight
_GRAPH_WEIGHT_OPS = {"aten.conv1d.default": False, "aten.conv2d.default": False, "aten.conv3d.default": False,
                     "aten.convolution.default": None, "aten.linear.default": False,
                     "aten.conv_transpose1d.input": True, "aten.conv_transpose2d.input": True,
                     "aten.conv_transpose3d.input": True}


def graph_layers(model: nn.Module) -> list[tuple[str, nn.Module, bool, bool]]:
    """Returns the weight layers of the exported graphs inside the model (a ``.pt2`` program has
    no layer modules, only the operators of its graph and the parameters they read):
    (layer name, the module holding ``weight``, transposed, whether it is the graph's last).
    """
    from torch import fx

    found = []
    for prefix, graph_module in model.named_modules():
        if not isinstance(graph_module, fx.GraphModule):
            continue
        layers = []
        for node in graph_module.graph.nodes:
            if node.op != "call_function" or str(node.target) not in _GRAPH_WEIGHT_OPS or len(node.args) < 2:
                continue
            kind = _GRAPH_WEIGHT_OPS[str(node.target)]
            weight = node.args[1]
            if not isinstance(weight, fx.Node) or weight.op != "get_attr" or not weight.target.endswith("weight"):
                continue
            holder_name, _, attr = weight.target.rpartition(".")
            holder = graph_module.get_submodule(holder_name) if holder_name else graph_module
            if attr != "weight" or not isinstance(getattr(holder, "weight", None), nn.Parameter):
                continue
            transposed = bool(node.args[6]) if kind is None and len(node.args) > 6 else bool(kind)
            layers.append((".".join(p for p in (prefix, holder_name) if p), holder, transposed))
        found += [(*layer, i == len(layers) - 1) for i, layer in enumerate(layers)]
    return found
