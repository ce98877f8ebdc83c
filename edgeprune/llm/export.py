"""Exporting a causal LM to ONNX with a dynamic batch axis and a pinned sequence length."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from edgeprune.backends.onnx_export import export_onnx
from edgeprune.llm.logits import CausalLMLogits


def export_causal_lm_onnx(model: nn.Module, input_ids: torch.Tensor, path: str | Path) -> Path:
    """Returns ``path`` after writing ``input_ids -> logits`` there as ONNX (batch axis dynamic).

    torch.export pins any axis whose example size is 1, so a batch-1 example would give a
    batch-1 graph that cannot score evaluation batches; the model is traced on two rows.
    """
    wrapper = model if isinstance(model, CausalLMLogits) else CausalLMLogits(model)
    rows = input_ids[:1].expand(2, -1).contiguous() if input_ids.shape[0] < 2 else input_ids
    return export_onnx(wrapper.eval(), (rows,), path)
