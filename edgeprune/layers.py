"""An inventory of a model's weight layers: kind, widths, parameters and MACs per call."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Layer:
    """One weight layer as the planner sees it.

    in_features / out_features are the reduction and output widths of the layer's GEMM
    (for a convolution: in_channels/groups x kernel area, and out_channels).
    """

    name: str
    kind: str  # conv, linear, embedding, attention
    in_features: int
    out_features: int
    params: int
    macs: int

    def nm_eligible(self, min_channels: int) -> bool:
        """True when a 2:4 sparse kernel can take this layer and it is large enough to gain."""
        if self.kind not in ("conv", "linear", "attention"):
            return False
        return (self.in_features % 16 == 0 and self.out_features % 8 == 0
                and min(self.in_features, self.out_features) >= min_channels)


def _gemm_shape(module: nn.Module) -> tuple[str, int, int] | None:
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        k = 1
        for s in module.kernel_size:
            k *= s
        return "conv", module.in_channels // module.groups * k, module.out_channels
    if isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        k = 1
        for s in module.kernel_size:
            k *= s
        return "conv", module.in_channels * k // module.groups, module.out_channels
    if isinstance(module, nn.Linear):
        return "linear", module.in_features, module.out_features
    if isinstance(module, nn.Embedding):
        return "embedding", module.num_embeddings, module.embedding_dim
    if isinstance(module, nn.MultiheadAttention):
        return "attention", module.embed_dim, module.embed_dim
    # transformers' GPT-2 Conv1D keeps a (in, out) weight
    if type(module).__name__ == "Conv1D" and hasattr(module, "nf"):
        return "linear", module.weight.shape[0], module.nf
    return None


@torch.no_grad()
def inventory(model: nn.Module, example_inputs: Sequence[torch.Tensor]) -> list[Layer]:
    """Returns the model's weight layers with MACs measured by one forward pass."""
    shapes = {name: s for name, m in model.named_modules() if (s := _gemm_shape(m))}
    outputs: dict[str, int] = {}
    hooks = []
    for name, module in model.named_modules():
        if name in shapes:
            def hook(_m, _inp, out, name=name):
                out = out[0] if isinstance(out, tuple) else out
                outputs[name] = outputs.get(name, 0) + out.numel()
            hooks.append(module.register_forward_hook(hook))
    try:
        model.eval()(*example_inputs)
    finally:
        for h in hooks:
            h.remove()
    layers = []
    modules = dict(model.named_modules())
    for name, (kind, fin, fout) in shapes.items():
        module = modules[name]
        params = sum(p.numel() for p in module.parameters(recurse=False))
        out_elems = outputs.get(name, 0)
        if kind == "embedding":
            macs = 0
        elif kind == "attention":
            # q, k, v and output projections; the score matmuls are counted by stats, not here
            macs = 4 * out_elems * fin
        else:
            macs = out_elems * fin
        layers.append(Layer(name, kind, fin, fout, params, macs))
    return layers
