"""Is protecting the first layer worth its cost? Accuracy after recovery on digits, at equal latency.

Two digits classifiers: the shipped VGG-style digits CNN (its stem feeds one layer) and a
ResNet-shaped CNN trained here (its stem writes the first stage's residual stream, so
protecting the stem keeps that whole stage). For each, structured pruning with the stem
protected at sparsity 0.5 is compared with pruning that may cut the stem, at the sparsity
whose MACs match (and at 0.5 too); both are recovered by the same distillation, and both are
timed side by side with ONNX Runtime (one thread, interleaved runs). Results go into
docs/benchmarks.md by hand.

    python benchmarks/first_layer_protection.py
"""

from __future__ import annotations

import copy
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "examples"))
sys.path.insert(0, str(ROOT / "benchmarks"))
import digits_cnn  # noqa: E402
from cnn_variants import BasicBlock  # noqa: E402

from edgeprune.backends.onnx_tools.export import export_onnx  # noqa: E402
from edgeprune.measure.local import measure_onnx_files  # noqa: E402
from edgeprune.prune import StructuredConfig, prune  # noqa: E402
from edgeprune.prune.recover import recalibrate_batchnorm, recover  # noqa: E402
from edgeprune.stats import count_macs  # noqa: E402
from edgeprune.timing import Protocol  # noqa: E402

RECOVER_STEPS = 200
SEEDS = (0, 1)


class DigitsResNet(nn.Module):
    """A stem and three stages of two basic blocks (32, 64, 128 channels) for 32x32 digits."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        blocks, cin = [], 32
        for i, cout in enumerate((32, 64, 128)):
            blocks += [BasicBlock(cin, cout, 1 if i == 0 else 2), BasicBlock(cout, cout, 1)]
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(cin, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(F.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1), 1))


def train_resnet(epochs: int = 6) -> nn.Module:
    return digits_cnn.train(epochs=epochs, build=DigitsResNet)


def accuracy(model: nn.Module) -> float:
    _, _, xt, yt = digits_cnn.load_digits_split()
    with torch.no_grad():
        return digits_cnn.accuracy(model, xt, yt)


def pruned(model: nn.Module, sparsity: float, protect: bool) -> nn.Module:
    """Returns the model pruned with its stem's output kept (named in ignore, so a stem that
    writes a residual stream keeps that stream) or with every first layer prunable."""
    x_train = digits_cnn.load_digits_split()[0]
    calib = [(x_train[i:i + 16],) for i in range(0, 128, 16)]
    stem = next(n for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
    config = StructuredConfig(sparsity, protect_first_last=False, channel_multiple=8,
                              ignore=(stem,) if protect else ())
    result = prune(model, config, calib, (x_train[:1],)).model
    recalibrate_batchnorm(result, calib)  # as every structured build does
    return result


def matching_sparsity(model: nn.Module, macs: int, x: torch.Tensor) -> float:
    """Returns the sparsity at which the unprotected model's MACs are nearest ``macs``."""
    best = min((abs(count_macs(pruned(model, s, False), (x,)) - macs), s) for s in np.arange(0.30, 0.52, 0.04))
    return round(float(best[1]), 2)


def latency_ms(models: dict[str, nn.Module], x: torch.Tensor, rounds: int = 12, runs: int = 20) -> dict[str, float]:
    """Returns each model's median ONNX Runtime latency (1 thread), timed side by side in
    interleaved rounds of ``runs`` runs each (the build's own timing)."""
    protocol = Protocol(warmup_s=0.1, round_s=0.0, min_rounds=rounds, max_rounds=rounds, min_runs_per_round=runs)
    with tempfile.TemporaryDirectory() as tmp:
        paths = {name: Path(export_onnx(m, (x,), Path(tmp) / f"{name}.onnx")) for name, m in models.items()}
        stats = measure_onnx_files(paths, [x], threads=1, protocol=protocol)
    return {n: s.median_ms for n, s in stats.items()}


def recovered_accuracy(student: nn.Module, teacher: nn.Module) -> list[float]:
    x_train = digits_cnn.load_digits_split()[0]
    data = [(x_train[i:i + 32],) for i in range(0, len(x_train), 32)]
    out = []
    for seed in SEEDS:
        torch.manual_seed(seed)
        s = copy.deepcopy(student)
        recover(s, teacher, data, RECOVER_STEPS)
        out.append(accuracy(s))
    return out


def main() -> None:
    x = digits_cnn.load_digits_split()[2][:1]
    for label, dense in (("digits CNN (VGG-style)", digits_cnn.load_model()), ("digits ResNet", train_resnet())):
        base = count_macs(dense, (x,))
        protected = pruned(dense, 0.5, True)
        target = count_macs(protected, (x,))
        s_eq = matching_sparsity(dense, target, x)
        variants = {"stem kept 0.5": protected, f"stem pruned {s_eq}": pruned(dense, s_eq, False),
                    "stem pruned 0.5": pruned(dense, 0.5, False)}
        lat = latency_ms({"dense": dense, **variants}, x)
        print(f"\n{label}: dense accuracy {accuracy(dense):.4f}, dense latency {lat['dense']:.3f} ms")
        print("| variant | MACs after / before | ONNX Runtime ms (1 thread) | accuracy after pruning | "
              f"after {RECOVER_STEPS} recovery steps (seeds {', '.join(map(str, SEEDS))}) |")
        print("|---|---|---|---|---|")
        for name, m in variants.items():
            accs = recovered_accuracy(m, dense)
            print(f"| {name} | {count_macs(m, (x,)) / base:.3f} | {lat[name]:.3f} | {accuracy(m):.4f} | "
                  f"{np.mean(accs):.4f} ({min(accs):.4f}-{max(accs):.4f}) |", flush=True)


if __name__ == "__main__":
    main()
