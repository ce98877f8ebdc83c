"""Block-by-block calibration: the inputs of one decoder block at a time and their statistics.

The model never runs end to end on the calibration set. The embeddings run once, up to the
first block; after that each block runs on the stored outputs of the block before it (already
pruned), so what is held at any time is one hidden-state tensor per calibration batch plus one
block's working activations and statistics, whatever the depth of the model.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from edgeprune.prune.calibration import InputStats


class _StopForward(Exception):
    """Raised by a hook once it has what it needs, so the rest of the forward pass is skipped."""


@dataclass
class BlockInputs:
    """The hidden states entering the current decoder block, one tensor per calibration batch,
    with the other arguments the model passes its blocks (masks, positions, rotary tables)."""

    hidden: list[torch.Tensor]
    args: list[tuple[Any, ...]]
    kwargs: list[dict[str, Any]]
    in_place: bool = False  # write each block's outputs into the stored tensors (memory-mapped ones stay so)

    @property
    def tokens(self) -> int:
        """Returns the number of calibration tokens."""
        return sum(h.shape[0] * h.shape[1] for h in self.hidden)

    @property
    def nbytes(self) -> int:
        """Returns the bytes held by the stored hidden states."""
        return sum(h.numel() * h.element_size() for h in self.hidden)

    def run(self, block: nn.Module) -> Iterator[torch.Tensor]:
        """Yields the block's output for each calibration batch."""
        for hidden, args, kwargs in zip(self.hidden, self.args, self.kwargs, strict=True):
            yield block_output(block(hidden, *args, **kwargs))

    def advance(self, block: nn.Module) -> None:
        """Replaces the stored hidden states with the block's outputs: the next block's inputs."""
        for i, output in enumerate(self.run(block)):
            if self.in_place and self.hidden[i].shape == output.shape:
                self.hidden[i].copy_(output)
            else:
                self.hidden[i] = output


def block_output(output: Any) -> torch.Tensor:
    """Returns the hidden states from a decoder block's output (a tensor, or a tuple before v5)."""
    return output[0] if isinstance(output, (tuple, list)) else output


@torch.no_grad()
def capture_block_inputs(
    model: nn.Module, first_block: nn.Module, batches: Sequence[torch.Tensor]
) -> BlockInputs:
    """Returns what the first decoder block receives for each batch of token ids.

    The model runs only as far as the first block: a hook records its arguments and stops
    the forward pass there.
    """
    hidden: list[torch.Tensor] = []
    extra_args: list[tuple[Any, ...]] = []
    extra_kwargs: list[dict[str, Any]] = []

    def record(module: nn.Module, args: tuple, kwargs: dict) -> None:
        kwargs = dict(kwargs)
        if args:
            hidden.append(args[0])
            extra_args.append(tuple(args[1:]))
        else:
            hidden.append(kwargs.pop("hidden_states"))
            extra_args.append(())
        extra_kwargs.append(kwargs)
        raise _StopForward

    handle = first_block.register_forward_pre_hook(record, with_kwargs=True)
    try:
        for input_ids in batches:
            try:
                model(input_ids=input_ids, use_cache=False)
            except _StopForward:
                pass
    finally:
        handle.remove()
    return BlockInputs(hidden, extra_args, extra_kwargs)


@torch.no_grad()
def collect_input_stats(
    block: nn.Module,
    inputs: BlockInputs,
    groups: Sequence[tuple[str, ...]],
    gram: Collection[str] = (),
) -> dict[str, InputStats]:
    """Returns the input statistics of the named projections of one block, by name.

    ``groups`` lists projections that share an input (q, k, v), in execution order; one set
    of statistics serves a group. Names in ``gram`` keep the full Gram matrix. The block runs
    only as far as the last group's input, which is all the statistics need.
    """
    stats: dict[str, InputStats] = {}
    handles = []
    last = len(groups) - 1

    def hook_for(group: tuple[str, ...], is_last: bool):
        def record(module: nn.Module, args: tuple) -> None:
            x = args[0]
            if group[0] not in stats:
                want_gram = any(name in gram for name in group)
                shared = InputStats(x.shape[-1], gram=want_gram)
                for name in group:
                    stats[name] = shared
            stats[group[0]].add(x)
            if is_last:
                raise _StopForward

        return record

    try:
        for i, group in enumerate(groups):
            module = block.get_submodule(group[0])
            handles.append(module.register_forward_pre_hook(hook_for(group, i == last)))
        for hidden, args, kwargs in zip(inputs.hidden, inputs.args, inputs.kwargs, strict=True):
            try:
                block(hidden, *args, **kwargs)
            except _StopForward:
                pass
    finally:
        for handle in handles:
            handle.remove()
    return stats
