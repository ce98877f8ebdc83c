"""A TinyLlama-1.1B-shaped Hugging Face checkpoint: the published config, random fp16 weights.

The runtime comparison (benchmarks/llm_runtimes.py) times decoding speed, which depends on the
model's shapes and not on its weights, so no model hub is needed: the weights are drawn with a
fixed seed and the tokenizer (SentencePiece BPE, 32000 pieces, byte fallback, as Llama 2's
tokenizer that TinyLlama reuses) is trained in a few seconds on text every Python install has.
The folder reads like the published one to llama.cpp's converter, to transformers and to
ONNX Runtime GenAI's model builder.
"""

from __future__ import annotations

import io
import json
import shutil
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Any

# TinyLlama/TinyLlama-1.1B-Chat-v1.0 and TinyLlama-1.1B-intermediate-step-1431k-3T, config.json
# on the model card (https://huggingface.co/TinyLlama/TinyLlama-1.1B-Chat-v1.0/blob/main/config.json),
# written in the transformers 4.x layout that both converters read; fp16 instead of the card's bf16.
TINYLLAMA_CONFIG: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "attention_bias": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "hidden_act": "silu",
    "hidden_size": 2048,
    "initializer_range": 0.02,
    "intermediate_size": 5632,
    "max_position_embeddings": 2048,
    "num_attention_heads": 32,
    "num_hidden_layers": 22,
    "num_key_value_heads": 4,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_scaling": None,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "torch_dtype": "float16",
    "use_cache": True,
    "vocab_size": 32000,
}
SEED = 0
# The files whose presence makes a checkpoint folder complete (it is renamed into place last).
FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.model",
         "tokenizer.json", "tokenizer_config.json")


def checkpoint_name(overrides: dict[str, Any]) -> str:
    """Returns the folder name of a checkpoint: one name per distinct config."""
    if not overrides:
        return "tinyllama-1.1b-random"
    return "tinyllama-random_" + "_".join(f"{k}-{v}" for k, v in sorted(overrides.items()))


def tinyllama_checkpoint(folder: Path, **overrides: Any) -> Path:
    """Returns the path of a TinyLlama-shaped checkpoint under ``folder``, written once.

    ``overrides`` replace config values (``hidden_size=1024, intermediate_size=2816`` for a
    smaller variant); each distinct set gets its own folder. About 2.2 GB for the full shape.
    """
    unknown = set(overrides) - set(TINYLLAMA_CONFIG)
    if unknown:
        raise ValueError(f"not LLaMA config keys: {sorted(unknown)}")
    target = Path(folder) / checkpoint_name(overrides)
    if all((target / name).is_file() for name in FILES):
        return target
    config = {**TINYLLAMA_CONFIG, **overrides}
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    (partial / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (partial / "generation_config.json").write_text(json.dumps({
        "bos_token_id": config["bos_token_id"], "eos_token_id": config["eos_token_id"],
        "max_length": config["max_position_embeddings"], "pad_token_id": 0,
    }, indent=2) + "\n")
    write_random_weights(config, partial / "model.safetensors")
    write_tokenizer(config, partial)
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return target


def write_random_weights(config: dict[str, Any], path: Path) -> int:
    """Returns the number of parameters written to ``path``: N(0, initializer_range) in fp16.

    The tensor names come from transformers' own LlamaForCausalLM built on the meta device, so
    no fp32 copy of the model ever exists; norms are ones, as a freshly initialised model has.
    """
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    hf_config = LlamaConfig(**{k: v for k, v in config.items() if k != "architectures"})
    with torch.device("meta"):
        shapes = {name: p.shape for name, p in LlamaForCausalLM(hf_config).state_dict().items()}
    generator = torch.Generator().manual_seed(SEED)
    tensors = {}
    for name, shape in shapes.items():
        if name.endswith("norm.weight"):
            tensors[name] = torch.ones(shape, dtype=torch.float16)
        else:
            tensors[name] = torch.empty(shape, dtype=torch.float16).normal_(
                0.0, config["initializer_range"], generator=generator)
    save_file(tensors, str(path), metadata={"format": "pt"})
    return sum(t.numel() for t in tensors.values())


def tokenizer_text() -> list[str]:
    """Returns the lines of local English and Python text the tokenizer is trained on.

    Python's help topics alone (about 0.5 MB) hold too few distinct pairs for 32000 BPE pieces,
    so the standard library's top-level modules are added (about 5 MB, a few seconds of training).
    """
    import pydoc_data.topics

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    texts = list(pydoc_data.topics.topics.values())
    texts += [f.read_text(encoding="utf-8", errors="replace") for f in sorted(stdlib.glob("*.py"))]
    return [line for text in texts for line in text.splitlines() if line.strip()]


def write_tokenizer(config: dict[str, Any], folder: Path) -> None:
    """Writes tokenizer.model, tokenizer.json and tokenizer_config.json into ``folder``.

    Trained with Llama 2's SentencePiece settings (BPE, byte fallback, split digits, no
    normalisation, <unk>=0 <s>=1 </s>=2); tokenizer.json is transformers' conversion of it,
    which ONNX Runtime GenAI's tokenizer reads, while llama.cpp's converter reads tokenizer.model.
    """
    import sentencepiece as spm
    from transformers import AutoTokenizer

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(tokenizer_text()), model_writer=model,
        vocab_size=config["vocab_size"], model_type="bpe", byte_fallback=True, split_digits=True,
        character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, add_dummy_prefix=True,
        remove_extra_whitespaces=False, allow_whitespace_only_pieces=True,
        normalization_rule_name="identity", max_sentence_length=100_000, num_threads=1,
        minloglevel=2,
    )
    (folder / "tokenizer.model").write_bytes(model.getvalue())
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False,
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": None,
        "legacy": False, "clean_up_tokenization_spaces": False,
        "model_max_length": config["max_position_embeddings"],
    }, indent=2) + "\n")
    # Only tokenizer.json is taken from transformers: the tokenizer_config.json it writes varies
    # with its version (5.x drops add_bos_token and adds its own keys).
    with tempfile.TemporaryDirectory() as converted:
        AutoTokenizer.from_pretrained(str(folder)).save_pretrained(converted)
        fast = Path(converted) / "tokenizer.json"
        if not fast.is_file():
            raise RuntimeError(f"transformers {sys.modules['transformers'].__version__} wrote no "
                               "tokenizer.json; ONNX Runtime GenAI needs one")
        shutil.copyfile(fast, folder / "tokenizer.json")
