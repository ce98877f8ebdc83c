"""Where structured pruning stands on real architectures: transformers' own models, random init, at 0.5.

Each model is built from its library config (small widths, random weights: no download),
wrapped to return logits, and pruned with the general structured engine at sparsity 0.5
(channel multiple 8); the line says MACs after / before, or the error, with a 120 s limit
per model. The figures go into docs/benchmarks.md by hand.

    python benchmarks/zoo_structured.py               # every family
    python benchmarks/zoo_structured.py vit bert      # some
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import torch
import transformers as T

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from edgeprune.prune import StructuredConfig, prune  # noqa: E402
from edgeprune.stats import count_macs  # noqa: E402

torch.manual_seed(0)

class Logits(torch.nn.Module):
    """The model's logits as one tensor."""

    def __init__(self, m: torch.nn.Module) -> None:
        super().__init__()
        self.m = m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.m(x)
        return out.logits if hasattr(out, "logits") else out[0]


def img(cfg_cls, model_cls, **kw):
    return model_cls(cfg_cls(**kw)).eval(), torch.rand(1, 3, 64, 64)


def txt(cfg_cls, model_cls, **kw):
    return model_cls(cfg_cls(**kw)).eval(), torch.randint(0, 100, (1, 16))


ZOO = {
 "resnet": lambda: img(T.ResNetConfig, T.ResNetForImageClassification, embedding_size=32, hidden_sizes=[32, 64, 128, 256], depths=[1,1,1,1], num_labels=10),
 "convnext": lambda: img(T.ConvNextConfig, T.ConvNextForImageClassification, hidden_sizes=[32,64,128,256], depths=[1,1,1,1], num_labels=10),
 "mobilenetv2": lambda: img(T.MobileNetV2Config, T.MobileNetV2ForImageClassification, num_labels=10, depth_multiplier=0.5),
 "mobilevit": lambda: img(T.MobileViTConfig, T.MobileViTForImageClassification, num_labels=10, image_size=64),
 "swin": lambda: img(T.SwinConfig, T.SwinForImageClassification, image_size=64, embed_dim=32, depths=[1,1], num_heads=[2,4], window_size=4, num_labels=10),
 "vit": lambda: img(T.ViTConfig, T.ViTForImageClassification, image_size=64, patch_size=8, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, num_labels=10),
 "deit": lambda: img(T.DeiTConfig, T.DeiTForImageClassification, image_size=64, patch_size=8, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, num_labels=10),
 "regnet": lambda: img(T.RegNetConfig, T.RegNetForImageClassification, num_labels=10),
 "efficientnet": lambda: img(T.EfficientNetConfig, T.EfficientNetForImageClassification, image_size=64, width_coefficient=0.5, depth_coefficient=0.5, num_labels=10),
 "levit": lambda: img(T.LevitConfig, T.LevitForImageClassification, image_size=64, num_labels=10),
 "bert": lambda: txt(T.BertConfig, T.BertForSequenceClassification, vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128),
 "distilbert": lambda: txt(T.DistilBertConfig, T.DistilBertForSequenceClassification, vocab_size=100, dim=64, n_layers=2, n_heads=4, hidden_dim=128),
 "roberta": lambda: txt(T.RobertaConfig, T.RobertaForSequenceClassification, vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128),
 "gpt2": lambda: txt(T.GPT2Config, T.GPT2LMHeadModel, vocab_size=100, n_embd=64, n_layer=2, n_head=4),
 "llama": lambda: txt(T.LlamaConfig, T.LlamaForCausalLM, vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2),
 "qwen2": lambda: txt(T.Qwen2Config, T.Qwen2ForCausalLM, vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2),
}

def alarm(*_):
    raise TimeoutError("over 120 s")


signal.signal(signal.SIGALRM, alarm)
names = sys.argv[1:] or list(ZOO)
for name in names:
    start = time.time()
    try:
        model, x = ZOO[name]()
        model = Logits(model).eval()
        before = count_macs(model, (x,))
        signal.alarm(120)
        res = prune(model, StructuredConfig(0.5, channel_multiple=8), [(x.expand(4, *x.shape[1:]).clone(),)] if x.is_floating_point() else [(x.repeat(4, 1),)], (x,))
        signal.alarm(0)
        after = count_macs(res.model, (x,))
        print(f"{name:14s} MACs {after / before:.2f}  ({time.time() - start:.1f} s)", flush=True)
    except BaseException as exc:
        signal.alarm(0)
        print(f"{name:14s} FAILED {type(exc).__name__}: {str(exc).splitlines()[0][:150] if str(exc) else ''} ({time.time() - start:.1f} s)", flush=True)
