"""A causal LM as a plain ``input_ids -> logits`` module, for ONNX export and scoring."""

from __future__ import annotations

import torch
from torch import nn


class CausalLMLogits(nn.Module):
    """Maps token ids (batch, seq) to next-token logits (batch, seq, vocab), with no KV cache.

    A transformers model returns an output object and, by default, a cache; the exporters and
    ``Workload.evaluate`` want one tensor in and one tensor out.
    """

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        # Positions given per row, not as one (1, seq) row the model would broadcast: a traced
        # broadcast against a batch of 1 pins the exported batch size to 1.
        batch, seq = input_ids.shape
        positions = torch.arange(seq, device=input_ids.device).unsqueeze(0).expand(batch, seq)
        return self.lm(
            input_ids=input_ids, position_ids=positions, use_cache=False, return_dict=True
        ).logits
