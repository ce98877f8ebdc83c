"""Verifying a decoder as a generator: its cached steps against the PyTorch model's full forward.

The decoder runs a prompt in one pass and then one token at a time from its KV cache, the
way it will generate; the reference is the PyTorch model recomputing the whole sequence at
every step, with no cache. Along PyTorch's own greedy path each step's logits are compared,
and the decoder then generates on its own: an fp32 decoder must pick exactly PyTorch's
tokens, a quantized one is judged by its logits here and by perplexity through the artifact.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgeprune.device.decode_loop import Decoder
from edgeprune.llm.logits import CausalLMLogits
from edgeprune.tasks import find_causal_lm
from edgeprune.verify import TOLERANCE

DECODE_STEPS = 32


@dataclass(frozen=True)
class GenerationCheck:
    """How a decoder's generation matched PyTorch's: logits of the prompt and of each cached step, tokens."""

    prompt_tokens: int
    decode_steps: int
    prefill_max_abs_diff: float
    decode_max_abs_diff: float
    rel_diff: float
    greedy_equal: bool
    greedy_agreement: float
    passed: bool
    detail: str = ""

    def to_dict(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if v != ""}
        return out


@torch.no_grad()
def check_generation(folder: Path, model: nn.Module, prompt: torch.Tensor, precision: str,
                     steps: int = DECODE_STEPS) -> GenerationCheck:
    """Returns how the decoder in ``folder`` generates after ``prompt`` (1, P) against ``model``'s full forward."""
    found = find_causal_lm(model)
    lm = CausalLMLogits(found[1] if found else model).eval()
    ids = prompt[:1].long()
    length = ids.shape[1]
    for _ in range(steps):  # PyTorch's greedy path, every step a full forward over the sequence
        ids = torch.cat([ids, lm(ids)[:, -1].argmax(-1, keepdim=True)], dim=1)
    reference = lm(ids)[0].float().numpy()
    decoder = Decoder(folder, context=ids.shape[1] + 1)
    got = [decoder.prefill(ids[:, :length].numpy())]
    for token in ids[0, length:-1].tolist():
        got.append(decoder.step(int(token)))
    got = np.stack(got).astype(np.float32)
    want = reference[length - 1:-1]
    diffs = np.abs(got - want).max(axis=-1)
    scale = float(np.abs(want).max()) or 1.0
    rel = float(diffs.max()) / scale
    mine = decoder.greedy(ids[:, :length].numpy(), steps)
    theirs = ids[0, length:].tolist()
    agreement = float(np.mean([a == b for a, b in zip(mine, theirs, strict=True)]))
    tolerance = TOLERANCE.get(precision, TOLERANCE["fp32"])[0]
    exact = precision == "fp32"
    passed = rel <= tolerance and (mine == theirs or not exact)
    detail = "" if passed else (
        f"the decoder's cached steps differ from PyTorch's full forward: relative diff {rel:.2e} "
        f"(tolerance {tolerance:.0e})" + ("" if mine == theirs or not exact else
                                          f"; greedy tokens differ from step {_first_difference(mine, theirs)}"))
    return GenerationCheck(length, steps, float(diffs[0]), float(diffs[1:].max()) if steps > 1 else 0.0, rel,
                           mine == theirs, agreement, passed, detail)


def _first_difference(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y), len(a))
