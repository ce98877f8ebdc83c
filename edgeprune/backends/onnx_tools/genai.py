"""The files beside a decoder that ONNX Runtime GenAI reads: genai_config.json and the tokenizer.

The config names the decoder's inputs and outputs as the GenAI model builder's do, so
``onnxruntime_genai.Model(folder)`` loads the folder and its ``Generator`` runs it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgeprune.backends.onnx_tools.decoder import DecoderShape

CONFIG = "genai_config.json"


def write_genai_config(folder: Path, shape: DecoderShape, filename: str = "model.onnx",
                       provider_options: list[dict] | None = None) -> Path:
    """Returns the genai_config.json written for a decoder of ``shape`` in ``folder`` (greedy search)."""
    pad = shape.pad_token_id if shape.pad_token_id is not None else shape.eos_token_id
    if isinstance(pad, list):
        pad = pad[0]
    config: dict[str, Any] = {
        "model": {
            "bos_token_id": shape.bos_token_id,
            "context_length": shape.context,
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": provider_options or []},
                "filename": filename,
                "head_size": shape.padded_head_dim,
                "hidden_size": shape.hidden,
                "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask",
                           "past_key_names": "past_key_values.%d.key", "past_value_names": "past_key_values.%d.value"},
                "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                            "present_value_names": "present.%d.value"},
                "num_attention_heads": shape.heads,
                "num_hidden_layers": shape.layers,
                "num_key_value_heads": shape.kv_heads,
            },
            "eos_token_id": shape.eos_token_id,
            "pad_token_id": pad,
            "type": shape.family,
            "vocab_size": shape.vocab,
        },
        "search": {
            "diversity_penalty": 0.0, "do_sample": False, "early_stopping": True, "length_penalty": 1.0,
            "max_length": shape.context, "min_length": 0, "no_repeat_ngram_size": 0, "num_beams": 1,
            "num_return_sequences": 1, "past_present_share_buffer": True, "repetition_penalty": 1.0,
            "temperature": 1.0, "top_k": 1, "top_p": 1.0,
        },
    }
    path = folder / CONFIG
    path.write_text(json.dumps(config, indent=2) + "\n")
    return path


def write_tokenizer(folder: Path, tokenizer: Any) -> list[Path]:
    """Returns the tokenizer files written into ``folder`` (tokenizer.json and its config), if one is given."""
    if tokenizer is None:
        return []
    before = set(folder.iterdir())
    tokenizer.save_pretrained(str(folder))
    return sorted(set(folder.iterdir()) - before)
