"""Pruning a causal LM streamed from its checkpoint: one decoder block in memory at a time, resumable.

``prune_checkpoint`` never loads the model. It reads the embeddings once (to turn the
calibration tokens into the first block's inputs) and then each block's tensors from the
safetensors files, in the checkpoint's dtype, prunes the block in float32 with the very
functions the in-memory pruner uses (Wanda, SparseGPT, magnitude, N:M, width with least
squares), runs the calibration states through it for the next block, and writes it to a
shard of its own. What is held is the calibration states plus about one block (two while
a block's outputs are computed), whatever the depth. Width pruning of the hidden size runs
twice over the blocks: first to score the hidden channels on the dense model (states
through dense blocks), then to prune. A killed run resumes from its last finished block and
writes the same bytes (edgeprune.llm.stream_state).
"""

from __future__ import annotations

import copy
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from edgeprune import __version__
from edgeprune.device.decode_loop import peak_rss_bytes
from edgeprune.errors import InputError, UnsupportedError
from edgeprune.llm.blocks import decoder_arch, decoder_layers, head_layout
from edgeprune.llm.calibrate import BlockInputs, capture_block_inputs
from edgeprune.llm.checkpoint import (
    Checkpoint,
    copy_side_files,
    shard_name,
    write_index,
    write_shard,
)
from edgeprune.llm.hf import from_folder, transformers
from edgeprune.llm.hidden import is_hidden_norm, kept_channels, narrow_block_
from edgeprune.llm.prune import calibration_batches, check_arguments, sparsify_block
from edgeprune.llm.stream_state import WORK, Progress, RunFolder, signature, spill
from edgeprune.llm.width import apply_width_to_config, plan_width, prune_block_width
from edgeprune.prune.calibration import InputStats

STREAMED_FAMILIES = ("llama", "mistral", "qwen2")
STATES_SHARE = 0.25  # of the memory budget: calibration states beyond it are memory-mapped


@torch.no_grad()
def prune_checkpoint(source: str | Path, target: str | Path, method: str, sparsity: float,
                     calibration: Sequence[torch.Tensor] | None, *, criterion: str = "wanda",
                     nm: tuple[int, int] = (2, 4), restore: bool = True, multiple: int = 1, batch_size: int = 8,
                     memory_mb: float | None = None, progress: Callable[[dict], None] | None = None) -> dict:
    """Returns what was done, after writing the pruned checkpoint (sharded safetensors, index, config,
    tokenizer) into ``target``; run again after a kill, it continues from the last finished block.

    ``calibration``: token-id tensors (a Workload's calibration or bare rows); ``memory_mb``:
    the budget the calibration states get a quarter of (default: half the machine's memory).
    ``progress(report)`` is told after every block: the block, tokens per second, time left
    and the peak memory so far.
    """
    check_arguments(method, sparsity, criterion, tuple(nm))
    hf = transformers()
    source, target = Path(source), Path(target)
    checkpoint = Checkpoint(source)
    if target.exists() and (not target.is_dir() or (any(target.iterdir()) and not (target / WORK).is_dir())):
        raise InputError(f"{target} exists and is not an unfinished streamed prune: choose a new folder")
    config = from_folder(hf.AutoConfig, source, "the model config")
    if config.model_type not in STREAMED_FAMILIES:
        raise UnsupportedError(f"streamed pruning reads {', '.join(STREAMED_FAMILIES)} checkpoints; "
                               f"{config.model_type!r} is pruned in memory (edgeprune.llm.prune_causal_lm)")
    skeleton = _skeleton(hf, config)
    # blocks built alone must attend as the model would (and take the causal mask it makes)
    config._attn_implementation = skeleton.config._attn_implementation
    arch = decoder_arch(skeleton)
    layers, dtype, hidden = config.num_hidden_layers, checkpoint.dtype(), config.hidden_size
    sparsity = 1.0 - nm[0] / nm[1] if method == "nm" else sparsity
    needs = criterion != "magnitude" or (method == "structured" and restore)
    batches = calibration_batches(calibration, batch_size) if needs else []
    if needs and not batches:
        raise InputError(f"{criterion} pruning needs calibration token ids; none were given")
    plan = plan_width(config, arch, sparsity, multiple) if method == "structured" else None
    run = signature(__version__, checkpoint.config_dict, method, sparsity, criterion, list(nm), restore, multiple,
                    *batches)
    folder = RunFolder(target, run)
    state = folder.progress()
    budget = int((memory_mb or _memory_mb() * 0.5) * 1e6 * STATES_SHARE)
    meter = _Meter(progress, layers, sum(b.numel() for b in batches))
    started = time.perf_counter()
    kept = None
    if plan is not None and plan.hidden < hidden:
        kept, state = _score_hidden(skeleton, checkpoint, arch, config, batches, plan.hidden, folder, state, meter,
                                    criterion == "wanda" and bool(batches))
    inputs, where = None, "none (magnitude needs no activations)"
    if batches:
        inputs = _first_inputs(skeleton, checkpoint, arch, batches, kept)
        if state.phase == "blocks" and state.done >= 0:
            inputs.hidden = folder.states("blocks")
        inputs.hidden, where = spill(inputs.hidden, folder.path, budget)
        inputs.in_place = True
    layout, count, shards = head_layout(config), layers + 1, {}
    for i in range(layers):
        names = [f"{arch.layers}.{i}.{k}" for k in _block_keys(skeleton)]
        shards[shard_name(i, count)] = names
        if state.phase == "blocks" and i <= state.done:
            continue  # written by an earlier run
        begun = time.perf_counter()
        block = _load_block(skeleton, checkpoint, arch, config, i)
        if kept is not None:
            narrow_block_(block, arch, kept, hidden)
        if plan is not None:
            prune_block_width(block, arch, layout, plan, inputs, criterion, restore)
        else:
            sparsify_block(block, arch, inputs, criterion, sparsity, nm if method == "nm" else None)
        if inputs is not None:
            inputs.advance(block)
        weights = {f"{arch.layers}.{i}.{k}": v.to(dtype) for k, v in block.state_dict().items()}
        shards[shard_name(i, count)] = list(weights)
        write_shard(target, shard_name(i, count), weights)
        state = Progress(run, "blocks", i, state.kept)
        folder.save(state, inputs.hidden if inputs is not None else None)
        meter.block("prune", i, time.perf_counter() - begun)
        del block, weights
    others = _others(checkpoint, arch, config, kept)
    shards[shard_name(layers, count)] = list(others)
    write_shard(target, shard_name(layers, count), others)
    if plan is not None:
        apply_width_to_config(config, arch, plan)
    config.save_pretrained(str(target))
    copy_side_files(source, target)
    write_index(target, shards)
    shutil.rmtree(folder.path, ignore_errors=True)
    return {"method": method, "criterion": criterion, "sparsity": sparsity, "layers": layers, "streamed": True,
            "calibration": {"tokens": sum(b.numel() for b in batches), "states": where},
            "hidden_width": {"before": hidden, "after": config.hidden_size},
            "heads": {"before": list(layout[:2]), "after": list(head_layout(config)[:2])},
            "time_s": round(time.perf_counter() - started, 2), "block_seconds": meter.seconds,
            "peak_rss_bytes": peak_rss_bytes(), "shards": count}


def _memory_mb() -> float:
    from edgeprune.host import memory_gb

    return memory_gb() * 1e3


def _skeleton(hf, config) -> nn.Module:
    """Returns the model with one block, every weight on the meta device: the code that turns token ids into the
    first block's inputs, without the weights (the rotary tables, computed from the config, made real)."""
    small = copy.deepcopy(config)
    small.num_hidden_layers = 1
    with torch.device("meta"):
        model = hf.AutoModelForCausalLM.from_config(small)
    for name, module in list(model.named_modules()):
        if name.endswith("rotary_emb"):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, type(module)(config=config))
    return model.eval()


def _block_keys(skeleton: nn.Module) -> list[str]:
    """Returns the names of a block's tensors (the skeleton's one block, on the meta device)."""
    return list(decoder_layers(skeleton, decoder_arch(skeleton))[0].state_dict())


def _load_block(skeleton: nn.Module, checkpoint: Checkpoint, arch, config, index: int) -> nn.Module:
    """Returns block ``index`` built from its checkpoint tensors alone, in float32."""
    cls = type(decoder_layers(skeleton, arch)[0])
    with torch.device("meta"):
        block = cls(config, layer_idx=index)
    start = f"{arch.layers}.{index}."
    tensors = checkpoint.tensors(checkpoint.block_names(arch.layers, index))
    block.load_state_dict({k[len(start):]: v.float() for k, v in tensors.items()}, assign=True)
    return block.eval()


def _first_inputs(skeleton: nn.Module, checkpoint: Checkpoint, arch, batches: list[torch.Tensor],
                  kept: torch.Tensor | None) -> BlockInputs:
    """Returns the first block's inputs: the embeddings (their kept hidden channels) of the calibration tokens."""
    others = {k: v.float() for k, v in checkpoint.tensors(_head_free(checkpoint, arch, skeleton)).items()}
    embedding = skeleton.get_input_embeddings()
    name = next(k for k in others if others[k].shape == embedding.weight.shape)
    table = others.pop(name)
    skeleton.load_state_dict(others, strict=False, assign=True)
    embedding.weight = nn.Parameter(table if kept is None else table[:, kept].contiguous(), requires_grad=False)
    with torch.no_grad():
        inputs = capture_block_inputs(skeleton, decoder_layers(skeleton, arch)[0], batches)
    # the embeddings go: the blocks need only their states
    embedding.weight = nn.Parameter(torch.empty(table.shape, device="meta"), requires_grad=False)
    return inputs


def _head_free(checkpoint: Checkpoint, arch, skeleton: nn.Module) -> list[str]:
    """Returns the non-block tensors the first block's inputs need: all but the LM head's."""
    head = skeleton.get_output_embeddings()
    head_names = {f"{n}.weight" for n, m in skeleton.named_modules() if m is head}
    return [n for n in checkpoint.other_names(arch.layers) if n not in head_names]


def _others(checkpoint: Checkpoint, arch, config, kept: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """Returns the embeddings, the last norm and the LM head, their hidden channels narrowed to ``kept``."""
    tensors = checkpoint.tensors(checkpoint.other_names(arch.layers))
    if kept is None:
        return tensors
    hidden = len(kept) if False else None  # noqa: F841 (kept for clarity below)
    out = {}
    for name, t in tensors.items():
        if t.dim() == 1 and t.shape[0] == config.hidden_size:
            out[name] = t[kept].contiguous()  # a norm over the stream
        elif t.dim() == 2 and t.shape[1] == config.hidden_size:
            out[name] = t[:, kept].contiguous()  # the embeddings and the LM head read the stream's channels
        else:
            out[name] = t
    return out


def _score_hidden(skeleton, checkpoint, arch, config, batches, count: int, folder: RunFolder, state: Progress,
                  meter: _Meter, on_activations: bool) -> tuple[torch.Tensor, Progress]:
    """Returns the hidden channels to keep, scored on the dense model streamed block by block (first pass)."""
    if state.phase == "blocks" and state.kept is not None:
        return torch.tensor(state.kept), state
    hidden = config.hidden_size
    stats = InputStats(hidden, gram=False)
    resumed = state.phase == "hidden" and state.done >= 0
    if resumed:
        stats.sum_sq, stats.tokens = torch.tensor(state.hidden_sum_sq), state.hidden_tokens
    inputs = _first_inputs(skeleton, checkpoint, arch, batches, None) if on_activations else None
    if inputs is not None and resumed:
        inputs.hidden = folder.states("hidden")
    if inputs is None and not resumed:  # magnitude: the embedding columns' norms start the score
        embedding = skeleton.get_input_embeddings()
        for t in checkpoint.tensors(_head_free(checkpoint, arch, skeleton)).values():
            if t.dim() == 2 and t.shape == embedding.weight.shape:
                stats.sum_sq += t.float().norm(dim=0)
    for i in range(state.done + 1 if resumed else 0, config.num_hidden_layers):
        begun = time.perf_counter()
        block = _load_block(skeleton, checkpoint, arch, config, i)
        if inputs is not None:
            handles = [m.register_forward_hook(lambda _m, _a, out: stats.add(out))
                       for m in block.modules() if is_hidden_norm(m, hidden)]
            inputs.advance(block)
            for h in handles:
                h.remove()
        else:
            stats.sum_sq += _weight_norms(block, arch)
        state = Progress(state.signature, "hidden", i, None, stats.sum_sq.tolist(), stats.tokens)
        folder.save(state, inputs.hidden if inputs is not None else None)
        meter.block("score the hidden channels", i, time.perf_counter() - begun)
    if inputs is not None:
        final = {k: v.float() for k, v in checkpoint.tensors(checkpoint.other_names(arch.layers)).items()
                 if v.dim() == 1 and v.shape[0] == hidden}
        skeleton.load_state_dict(final, strict=False, assign=True)
        for norm in (m for n, m in skeleton.named_modules() if is_hidden_norm(m, hidden) and ".layers." not in n):
            with torch.no_grad():
                for h in inputs.hidden:
                    stats.add(norm(h))
        scores = stats.norms()
    else:
        scores = stats.sum_sq
    kept = kept_channels(scores, count)
    state = Progress(state.signature, "blocks", -1, kept.tolist())
    folder.save(state, None)
    return kept, state


def _weight_norms(block: nn.Module, arch) -> torch.Tensor:
    """Returns a block's contribution to magnitude scores of the hidden channels (as hidden_scores sums them)."""
    from edgeprune.llm.blocks import weight_matrix

    score = 0
    for name in (*arch.attn_in, *arch.mlp_in):
        score = score + weight_matrix(block.get_submodule(name)).detach().float().norm(dim=0)
    for name in (arch.attn_out, arch.mlp_out):
        score = score + weight_matrix(block.get_submodule(name)).detach().float().norm(dim=1)
    return score


class _Meter:
    """Progress a person waiting half an hour wants: block k of N, calibration tokens/s, time left, peak memory."""

    def __init__(self, report: Callable[[dict], None] | None, blocks: int, tokens: int) -> None:
        self.report, self.blocks, self.tokens = report, blocks, tokens
        self.seconds: list[float] = []

    def block(self, phase: str, index: int, seconds: float) -> None:
        self.seconds.append(round(seconds, 3))
        if self.report is None:
            return
        recent = self.seconds[-self.blocks:]
        mean = sum(recent) / len(recent)
        self.report({"phase": phase, "block": index + 1, "blocks": self.blocks, "seconds": seconds,
                     "tokens_per_s": self.tokens / seconds if seconds > 0 else None,
                     "left_s": mean * (self.blocks - index - 1), "peak_rss_bytes": peak_rss_bytes()})
