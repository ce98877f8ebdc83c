"""The models the estimator is checked on: the digits CNN and a ResNet-18-shaped CNN, each
dense, structured at 0.5 (the same network with half the channels, which is what
structured pruning yields), int8 (ONNX Runtime static QDQ: U8 activations, S8 weights,
per channel) and both together."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ("dense", "structured-0.5", "int8", "structured-0.5+int8")


class BasicBlock(nn.Module):
    """ResNet's two 3x3 convolutions with a residual (a 1x1 projection when the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + (x if self.down is None else self.down(x)))


class ResNet18Shaped(nn.Module):
    """ResNet-18's layout (stem, four stages of two basic blocks, 64..512 channels) at any width."""

    def __init__(self, width: float = 1.0, classes: int = 1000) -> None:
        super().__init__()
        w = [int(c * width) for c in (64, 128, 256, 512)]
        self.stem = nn.Sequential(nn.Conv2d(3, w[0], 7, 2, 3, bias=False), nn.BatchNorm2d(w[0]), nn.ReLU(),
                                  nn.MaxPool2d(3, 2, 1))
        blocks, cin = [], w[0]
        for i, cout in enumerate(w):
            blocks += [BasicBlock(cin, cout, 1 if i == 0 else 2), BasicBlock(cout, cout, 1)]
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def _randomize_bn(model: nn.Module, seed: int) -> nn.Module:
    """Gives BatchNorm layers non-trivial statistics so folding them is real work for the exporter."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


def digits_model(width: float = 1.0) -> tuple[nn.Module, torch.Tensor]:
    """Returns the digits CNN (trained weights when dense; width 0.5 is the half-channel copy)."""
    sys.path.insert(0, str(ROOT / "examples"))
    import digits_cnn

    x = digits_cnn.load_digits_split()[2][:1]
    if width == 1.0:
        return digits_cnn.load_model(), x
    widths = tuple(int(c * width) for c in (64, 128, 256))
    torch.manual_seed(0)
    return _randomize_bn(digits_cnn.DigitsCNN(widths=widths), 1), x


def resnet18_model(width: float = 1.0, size: int = 224) -> tuple[nn.Module, torch.Tensor]:
    """Returns a ResNet-18-shaped CNN (random weights) and one input image of size x size."""
    torch.manual_seed(0)
    return _randomize_bn(ResNet18Shaped(width), 2), torch.rand(1, 3, size, size)


class _Reader:
    """Feeds calibration batches to onnxruntime.quantization."""

    def __init__(self, name: str, batches: Sequence[np.ndarray]) -> None:
        self._it: Iterator[np.ndarray] = iter(batches)
        self._name = name

    def get_next(self) -> dict | None:
        batch = next(self._it, None)
        return None if batch is None else {self._name: batch}


def quantize_int8(fp32_path: Path, out_path: Path, calibration: Sequence[np.ndarray]) -> Path:
    """Returns the path of a static int8 QDQ model (U8 activations, S8 per-channel weights)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = out_path.with_name(out_path.stem + ".pre.onnx")
    quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
    name = onnx.load(str(pre)).graph.input[0].name
    quantize_static(str(pre), str(out_path), _Reader(name, calibration), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                    calibrate_method=CalibrationMethod.MinMax)
    pre.unlink(missing_ok=True)
    return out_path


def export_variants(model_name: str, folder: Path, size: int = 224) -> tuple[dict[str, Path], torch.Tensor]:
    """Returns {variant: ONNX path} for every variant in VARIANTS, and the input they take."""
    from edgeprune.backends.onnx_tools.export import export_onnx

    folder.mkdir(parents=True, exist_ok=True)
    make = digits_model if model_name == "digits" else (lambda w: resnet18_model(w, size))
    dense, x = make(1.0)
    half, _ = make(0.5)
    paths = {
        "dense": export_onnx(dense, (x,), folder / f"{model_name}-dense.onnx"),
        "structured-0.5": export_onnx(half, (x,), folder / f"{model_name}-half.onnx"),
    }
    if model_name == "digits":
        sys.path.insert(0, str(ROOT / "examples"))
        import digits_cnn

        train = digits_cnn.load_digits_split()[0]
        calib = [train[i : i + 1].numpy() for i in range(0, 64, 4)]
    else:
        g = torch.Generator().manual_seed(3)
        calib = [torch.rand(1, 3, size, size, generator=g).numpy() for _ in range(8)]
    paths["int8"] = quantize_int8(paths["dense"], folder / f"{model_name}-int8.onnx", calib)
    paths["structured-0.5+int8"] = quantize_int8(paths["structured-0.5"], folder / f"{model_name}-half-int8.onnx", calib)
    return paths, x
