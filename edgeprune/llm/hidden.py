"""The residual stream as a prunable width (Minitron-style): hidden channels scored on the
activations of every norm, then removed from every layer that reads or writes the stream.

The hidden width is shared by the embeddings (token and learned position), every norm, the
input columns of the projections reading the stream (q/k/v, fc1 or gate/up, the LM head) and
the output rows of those writing it (the attention output and the down projection). One set
of channels is kept for all of them. A norm over fewer channels computes its statistics over
fewer values, so this changes the function more than removing neurons does: recovery is
what brings the rest back.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from edgeprune.llm.blocks import DecoderArch, weight_matrix
from edgeprune.llm.calibrate import BlockInputs
from edgeprune.llm.surgery import keep_inputs_, keep_outputs_
from edgeprune.prune.calibration import InputStats


def is_hidden_norm(module: nn.Module, hidden: int) -> bool:
    """Returns whether ``module`` normalises the residual stream (LayerNorm, RMSNorm, ...)."""
    weight = getattr(module, "weight", None)
    return (type(module).__name__.endswith("Norm") and isinstance(weight, torch.Tensor)
            and tuple(weight.shape) == (hidden,))


@torch.no_grad()
def hidden_scores(lm: nn.Module, arch: DecoderArch, layers: nn.ModuleList, inputs: BlockInputs | None) -> torch.Tensor:
    """Returns one score per hidden channel.

    With calibration inputs (the dense model's first-block inputs): the summed L2 norm of the
    channel over every norm's output, block by block (``inputs`` is advanced through the
    dense blocks and left at the last block's output). Without: the summed L2 norm of the
    channel's weights in every projection that reads or writes it, and its embedding column.
    """
    hidden = lm.config.hidden_size
    if inputs is None:
        score = lm.get_input_embeddings().weight.detach().float().norm(dim=0)
        for block in layers:
            for name in (*arch.attn_in, *arch.mlp_in):
                score += weight_matrix(block.get_submodule(name)).detach().float().norm(dim=0)
            for name in (arch.attn_out, arch.mlp_out):
                score += weight_matrix(block.get_submodule(name)).detach().float().norm(dim=1)
        return score
    stats = InputStats(hidden, gram=False)

    def record(module, args, output):
        stats.add(output)

    for block in layers:
        handles = [m.register_forward_hook(record) for m in block.modules() if is_hidden_norm(m, hidden)]
        try:
            inputs.advance(block)
        finally:
            for h in handles:
                h.remove()
    inside = {m for block in layers for m in block.modules()}
    for final in (m for m in lm.modules() if is_hidden_norm(m, hidden) and m not in inside):
        for h in inputs.hidden:
            stats.add(final(h))
    return stats.norms()


def kept_channels(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Returns the ``count`` highest-scoring channels in ascending order."""
    return torch.topk(scores, count).indices.sort().values


@torch.no_grad()
def prune_hidden_(lm: nn.Module, arch: DecoderArch, layers: nn.ModuleList, kept: torch.Tensor) -> None:
    """Keeps only the hidden channels ``kept`` everywhere the residual stream goes, in place."""
    hidden = lm.config.hidden_size
    embedding, head = lm.get_input_embeddings(), lm.get_output_embeddings()
    tied = head is not None and head.weight is embedding.weight
    inside = {m for block in layers for m in block.modules()}
    for module in lm.modules():
        if isinstance(module, nn.Embedding) and module.embedding_dim == hidden:
            module.weight = nn.Parameter(module.weight.detach()[:, kept].contiguous())
            module.embedding_dim = len(kept)
        elif is_hidden_norm(module, hidden) and module not in inside:
            slice_norm(module, kept)
    for block in layers:
        narrow_block_(block, arch, kept, hidden)
    if head is not None:
        if tied:
            head.weight = embedding.weight
            head.in_features = len(kept)
        else:
            keep_inputs_(head, kept)
    lm.config.hidden_size = len(kept)


@torch.no_grad()
def narrow_block_(block: nn.Module, arch: DecoderArch, kept: torch.Tensor, hidden: int) -> None:
    """Keeps only the hidden channels ``kept`` in one block: its norms, the projections reading the
    stream (their input columns) and those writing it (their output rows), in place."""
    for module in block.modules():
        if is_hidden_norm(module, hidden):
            slice_norm(module, kept)
    for name in (*arch.attn_in, *arch.mlp_in):
        keep_inputs_(block.get_submodule(name), kept)
    for name in (arch.attn_out, arch.mlp_out):
        keep_outputs_(block.get_submodule(name), kept)


def slice_norm(module: nn.Module, kept: torch.Tensor) -> None:
    """Keeps the channels ``kept`` of a norm over the hidden width, in place."""
    module.weight = nn.Parameter(module.weight.detach()[kept].contiguous())
    if isinstance(getattr(module, "bias", None), torch.Tensor):
        module.bias = nn.Parameter(module.bias.detach()[kept].contiguous())
    if isinstance(module, nn.LayerNorm):
        module.normalized_shape = (len(kept),)


def inner_attributes(attention: nn.Module, old: Sequence[int], new: Sequence[int]) -> None:
    """Updates an attention module's own width attributes after heads went (GPT-2 keeps
    ``num_heads``, ``embed_dim`` and ``split_size`` on the module): each (old, new) pair by value."""
    for attr in ("num_heads", "n_head", "embed_dim", "split_size"):
        value = getattr(attention, attr, None)
        if isinstance(value, int) and not isinstance(value, bool) and value in old:
            setattr(attention, attr, new[list(old).index(value)])
