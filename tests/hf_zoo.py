"""Real architectures from the `transformers` library, built from their own configs at small
widths (random weights, nothing downloaded), saved as directories `hf:DIR` loads.

The zoo test (tests/test_zoo.py) and benchmarks/zoo_structured.py build the same models from here.
Causal LMs get the shipped tiny LM's tokenizer, so their workload scores perplexity on text.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
TOKENIZER = ROOT / "examples" / "weights" / "tiny_lm"
VOCAB = 1024  # the shipped tokenizer's vocabulary
IMAGE = 64


def _image(config: str, model: str, **fields) -> Callable[[], torch.nn.Module]:
    def build():
        import transformers as T

        fields.setdefault("image_size", IMAGE)  # what hf:DIR feeds it (configs without the field keep it too)
        return getattr(T, model)(getattr(T, config)(num_labels=10, **fields))
    return build


def _text(config: str, model: str, **fields) -> Callable[[], torch.nn.Module]:
    def build():
        import transformers as T

        return getattr(T, model)(getattr(T, config)(vocab_size=VOCAB, **fields))
    return build


ENCODER = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
DECODER = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, max_position_embeddings=256)

ZOO: dict[str, Callable[[], torch.nn.Module]] = {
    "resnet": _image("ResNetConfig", "ResNetForImageClassification", embedding_size=32,
                     hidden_sizes=[64, 128, 256, 512], depths=[1, 1, 1, 1], layer_type="basic"),
    "convnext": _image("ConvNextConfig", "ConvNextForImageClassification", hidden_sizes=[32, 64, 128, 256],
                       depths=[1, 1, 1, 1]),
    "mobilenetv2": _image("MobileNetV2Config", "MobileNetV2ForImageClassification", depth_multiplier=0.5),
    "efficientnet": _image("EfficientNetConfig", "EfficientNetForImageClassification",
                           width_coefficient=1.0, depth_coefficient=0.5, hidden_dim=1280),
    "regnet": _image("RegNetConfig", "RegNetForImageClassification", hidden_sizes=[32, 64, 160, 384],
                     depths=[1, 1, 1, 1], groups_width=16),
    "mobilevit": _image("MobileViTConfig", "MobileViTForImageClassification"),
    "swin": _image("SwinConfig", "SwinForImageClassification", embed_dim=32, depths=[1, 1],
                   num_heads=[2, 4], window_size=4),
    "vit": _image("ViTConfig", "ViTForImageClassification", patch_size=8, **ENCODER),
    "deit": _image("DeiTConfig", "DeiTForImageClassification", patch_size=8, **ENCODER),
    "levit": _image("LevitConfig", "LevitForImageClassification", depths=[2, 2, 2]),
    "bert": _text("BertConfig", "BertForSequenceClassification", **ENCODER),
    "distilbert": _text("DistilBertConfig", "DistilBertForSequenceClassification", dim=64, n_layers=2, n_heads=4,
                        hidden_dim=128),
    "roberta": _text("RobertaConfig", "RobertaForSequenceClassification", **ENCODER),
    "gpt2": _text("GPT2Config", "GPT2LMHeadModel", n_embd=64, n_layer=2, n_head=4, n_positions=256,
                  bos_token_id=0, eos_token_id=0),
    "llama": _text("LlamaConfig", "LlamaForCausalLM", **DECODER),
    "qwen2": _text("Qwen2Config", "Qwen2ForCausalLM", **DECODER),
}
CAUSAL_LMS = ("gpt2", "llama", "qwen2")


def save(family: str, folder: Path, seed: int = 0) -> Path:
    """Builds the family's model with random weights and saves it (with a tokenizer for a causal LM)."""
    torch.manual_seed(seed)
    model = ZOO[family]().eval()
    model.save_pretrained(folder)
    if family in CAUSAL_LMS:
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(TOKENIZER / name, folder / name)
    return folder
