"""Decoders on the device agent: an LLM's decoder uploaded, checked, written under the agent's names and run.

A decoder arrives as three files: ``model.onnx``, its weights ``model.onnx.data`` and
``genai_config.json``. The graph may name external data, but only that one file and only
within its size; the config is rewritten from the numbers the loop needs, so nothing the
client wrote is used as a path. The agent runs its own generation loop (``decode_loop``)
on it, a process a decoder, in interleaved rounds, and answers with the figures.
"""

from __future__ import annotations

import json
from pathlib import Path

from edgeprune.device.decode_loop import side_by_side

DECODER_FILES = ("model.onnx", "model.onnx.data", "genai_config.json")
# what a generation request may ask for: prompt and generated tokens, rounds of processes
GENERATION_BOUNDS = {"prompt": (1, 32768), "gen": (1, 8192), "repeats": (1, 10)}
CONFIG_FIELDS = ("num_hidden_layers", "num_key_value_heads", "head_size")


class DecoderRefused(ValueError):
    """An uploaded decoder the agent will not write or run (a 400 answer)."""


def parse_generation(spec: object) -> dict | None:
    """Returns a manifest's generation request ({prompt, gen, repeats}) or None; DecoderRefused if malformed."""
    if spec is None:
        return None
    if not isinstance(spec, dict) or set(spec) - set(GENERATION_BOUNDS) or not {"prompt", "gen"} <= set(spec):
        raise DecoderRefused(f"manifest 'generation' takes {', '.join(GENERATION_BOUNDS)} (prompt and gen required)")
    out = {"repeats": 1}
    for key, value in spec.items():
        lo, hi = GENERATION_BOUNDS[key]
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise DecoderRefused(f"manifest generation.{key} must be a whole number in [{lo}, {hi}]")
        out[key] = value
    return out


def check_decoder(files: dict[str, bytes]) -> dict:
    """Returns the decoder's config as the agent will write it; DecoderRefused for anything else.

    The graph's external tensors must all lie in ``model.onnx.data`` (offset and length
    inside it), and the config must state the widths the loop reads, as whole numbers.
    """
    import onnx
    from google.protobuf.message import DecodeError

    missing = [name for name in DECODER_FILES if name not in files]
    if missing:
        raise DecoderRefused(f"the decoder lacks {', '.join(missing)}")
    try:
        model = onnx.load_model_from_string(files["model.onnx"])
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise DecoderRefused(f"model.onnx is not a valid ONNX model ({type(exc).__name__})") from None
    size = len(files["model.onnx.data"])
    for tensor in model.graph.initializer:
        if tensor.data_location != onnx.TensorProto.EXTERNAL and not tensor.external_data:
            continue
        entries = {e.key: e.value for e in tensor.external_data}
        if set(entries) - {"location", "offset", "length", "checksum"} or entries.get("location") != "model.onnx.data":
            raise DecoderRefused("model.onnx may keep its weights only in model.onnx.data, beside it")
        try:
            offset, length = int(entries.get("offset", 0)), int(entries["length"])
        except (KeyError, ValueError):
            raise DecoderRefused("an external tensor of model.onnx states no valid offset and length") from None
        if offset < 0 or length < 0 or offset + length > size:
            raise DecoderRefused("an external tensor of model.onnx lies outside model.onnx.data")
    try:
        config = json.loads(files["genai_config.json"])
        model_section, decoder = config["model"], config["model"]["decoder"]
        numbers = {key: decoder[key] for key in CONFIG_FIELDS}
        numbers.update(vocab_size=model_section["vocab_size"], context_length=model_section["context_length"])
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        raise DecoderRefused(f"genai_config.json must state model.decoder.{', '.join(CONFIG_FIELDS)}, "
                             "model.vocab_size and model.context_length") from None
    if not all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= 1 << 20 for v in numbers.values()):
        raise DecoderRefused("genai_config.json's widths must be positive whole numbers")
    return {"model": {"vocab_size": numbers["vocab_size"], "context_length": numbers["context_length"],
                      "decoder": {"filename": "model.onnx", **{k: numbers[k] for k in CONFIG_FIELDS}}}}


def write_decoder(folder: Path, files: dict[str, bytes]) -> Path:
    """Returns the folder the decoder was written into, under the agent's own names (the config rewritten)."""
    config = check_decoder(files)
    folder.mkdir()
    (folder / "model.onnx").write_bytes(files["model.onnx"])
    (folder / "model.onnx.data").write_bytes(files["model.onnx.data"])
    (folder / "genai_config.json").write_text(json.dumps(config))
    return folder


def run_generation(folders: dict[str, Path], generation: dict, threads: int) -> dict[str, dict]:
    """Returns every decoder's figures, timed side by side in rounds of processes on this device
    (RuntimeError naming the decoder when the runtime cannot run it)."""
    return side_by_side(folders, generation["prompt"], generation["gen"], threads, generation["repeats"])
