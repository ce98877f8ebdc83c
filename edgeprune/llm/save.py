"""Saving a pruned causal LM as a Hugging Face directory, and checking that it reloads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgeprune.errors import InputError
from edgeprune.llm.hf import from_folder, transformers
from edgeprune.llm.logits import CausalLMLogits
from edgeprune.tasks import find_causal_lm


def _lm(model: nn.Module) -> nn.Module:
    found = find_causal_lm(model)
    if found is None:
        raise InputError(f"{type(model).__name__} holds no transformers causal LM to save")
    return found[1]


def load_causal_lm(path: str | Path) -> nn.Module:
    """Returns the causal LM saved in a local directory, in float32 and eval mode."""
    hf = transformers()
    path = Path(path)
    if not (path / "config.json").is_file():
        raise InputError(f"{path} is not a Hugging Face model directory (no config.json)")
    # float32 on CPU: checkpoints are often stored in fp16, which CPUs compute slowly and
    # less accurately, and the pruning statistics want full precision.
    major, minor = (int(x) for x in hf.__version__.split(".")[:2])
    dtype_key = "dtype" if (major, minor) >= (4, 56) else "torch_dtype"
    return from_folder(hf.AutoModelForCausalLM, path, "a causal LM", **{dtype_key: torch.float32}).eval()


def save_pretrained(model: nn.Module, path: str | Path, tokenizer: Any = None) -> Path:
    """Returns ``path`` after saving the model (config and safetensors) and its tokenizer there.

    The config already carries the pruned widths (``prune_causal_lm`` writes them), so
    ``AutoModelForCausalLM.from_pretrained(path)`` rebuilds the pruned shapes.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    _lm(model).save_pretrained(str(path), safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(path))
    return path


@torch.no_grad()
def reload_max_abs_diff(model: nn.Module, path: str | Path, input_ids: torch.Tensor) -> float:
    """Returns the largest logit difference between ``model`` and its reload from ``path``."""
    reloaded = load_causal_lm(path)
    expected = CausalLMLogits(_lm(model).eval())(input_ids)
    actual = CausalLMLogits(reloaded)(input_ids)
    if expected.shape != actual.shape:
        raise InputError(f"reloaded model gives logits {tuple(actual.shape)}, expected {tuple(expected.shape)}")
    return float((expected - actual).abs().max())
