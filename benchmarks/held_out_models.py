"""The estimator's held-apart set: architectures it was never fitted to nor tuned on, each fp32
and int8 (the int8 edgeprune would build for the profile: static QDQ for the CNN, dynamic
MatMuls for the transformers), exported to ONNX as a build exports them.

A ResNet-50-shaped CNN (bottleneck blocks: 1x1, 3x3, 1x1 and strided 1x1 shortcuts; the fitted
set's ResNet is ResNet-18's basic blocks) at 160x160, a MobileNetV2-shaped CNN (inverted
residuals, depthwise convolutions) at 160x160, a ViT-S/16
at 224x224, GPT-2 small's layout (6 layers, 384 wide) on 128 tokens and a BERT of the same
size on 128 tokens; random weights (latency does not depend on their values).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

HELD_OUT = {"resnet50": "ResNet-50-shaped CNN (160x160)", "mobilenetv2": "MobileNetV2-shaped CNN (160x160)", "vit": "ViT-S/16 (224x224, transformers)",
            "gpt": "GPT-2 layout, 6 x 384 (128 tokens)", "bert": "BERT, 6 x 384 (128 tokens)"}


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        layers = [] if expand == 1 else [nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU6()]
        layers += [nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False), nn.BatchNorm2d(mid), nn.ReLU6(),
                   nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.residual else self.body(x)


class Bottleneck(nn.Module):
    def __init__(self, cin: int, mid: int, stride: int) -> None:
        super().__init__()
        cout = mid * 4
        self.body = nn.Sequential(
            nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(),
            nn.Conv2d(mid, mid, 3, stride, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(),
            nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.shortcut = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


class ResNet50Shaped(nn.Module):
    """ResNet-50's layout: a 7x7 stem, then (3, 4, 6, 3) bottlenecks of 64 to 512 (x4) channels."""

    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        layers, cin = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1)], 64
        for stage, (mid, repeats) in enumerate(((64, 3), (128, 4), (256, 6), (512, 3))):
            for i in range(repeats):
                layers.append(Bottleneck(cin, mid, 2 if i == 0 and stage > 0 else 1))
                cin = mid * 4
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1))


class MobileNetV2Shaped(nn.Module):
    """MobileNetV2's layout: (expansion, channels, repeats, stride) per stage, as its paper gives it."""

    STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))

    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        layers, cin = [nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6()], 32
        for expand, cout, repeats, stride in self.STAGES:
            for i in range(repeats):
                layers.append(InvertedResidual(cin, cout, stride if i == 0 else 1, expand))
                cin = cout
        layers += [nn.Conv2d(cin, 1280, 1, bias=False), nn.BatchNorm2d(1280), nn.ReLU6()]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(1280, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1))


class Logits(nn.Module):
    """A transformers model as ``input -> logits`` (one tensor in, one out, as a build exports it)."""

    def __init__(self, model: nn.Module, key: str) -> None:
        super().__init__()
        self.model, self.key = model, key

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(**{self.key: x}).logits


def held_out_model(name: str) -> tuple[nn.Module, torch.Tensor, list[torch.Tensor]]:
    """Returns (model, one input, calibration inputs) for a held-apart architecture."""
    import transformers as hf

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    if name in ("resnet50", "mobilenetv2"):
        model = ResNet50Shaped() if name == "resnet50" else MobileNetV2Shaped()
        for m in model.modules():  # non-trivial statistics, so folding them is real work
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
        return model.eval(), torch.rand(1, 3, 160, 160), [torch.rand(1, 3, 160, 160, generator=g) for _ in range(8)]
    if name == "vit":
        config = hf.ViTConfig(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536,
                              image_size=224, patch_size=16, num_labels=1000)
        model = Logits(hf.ViTForImageClassification(config), "pixel_values")
        return model.eval(), torch.rand(1, 3, 224, 224), [torch.rand(1, 3, 224, 224, generator=g) for _ in range(8)]
    if name == "gpt":
        config = hf.GPT2Config(n_embd=384, n_layer=6, n_head=6, n_positions=256, vocab_size=8192, use_cache=False,
                               bos_token_id=0, eos_token_id=0)
        model = Logits(hf.GPT2LMHeadModel(config), "input_ids")
    else:
        config = hf.BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=6, intermediate_size=1536,
                               vocab_size=8192, num_labels=2)
        model = Logits(hf.BertForSequenceClassification(config), "input_ids")
    ids = [torch.randint(0, 8192, (1, 128), generator=g) for _ in range(9)]
    return model.eval(), ids[0], ids[1:]


def export_held_out(name: str, folder: Path, profile) -> tuple[dict[str, Path], torch.Tensor]:
    """Returns ({"fp32": path, "int8": path}, the input) for a held-apart model on a profile."""
    import onnx

    from edgeprune.backends.onnx_tools.export import export_onnx
    from edgeprune.backends.onnx_tools.quantize import int8_config_for, quantize_int8

    folder.mkdir(parents=True, exist_ok=True)
    model, x, calibration = held_out_model(name)
    fp32 = export_onnx(model, (x,), folder / f"{name}.onnx")
    config = int8_config_for(profile, onnx.load(str(fp32), load_external_data=False))
    int8 = quantize_int8(fp32, folder / f"{name}-int8.onnx", [(c,) for c in calibration], config)
    return {"fp32": fp32, "int8": int8}, x
