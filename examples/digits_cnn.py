"""A CNN on scikit-learn's bundled handwritten digits: real data, no download.

The 8x8 scans are resized to 32x32 so the network does enough arithmetic per image to be
compute-bound on a CPU (a few ms at batch 1); that is what lets pruning show up in latency.
Weights ship in ``examples/weights/digits_cnn.pt`` (fp16, about 2 MB); if the file is missing,
the first use trains the model (a few minutes on two cores) and caches it there.

    edgeprune build examples/digits_cnn.py --profile x86-avx2 -o out/digits
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import edgeprune

WEIGHTS = Path(__file__).with_name("weights") / "digits_cnn.pt"
SIZE = 32


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class DigitsCNN(nn.Module):
    """Three VGG-style stages (64, 128, 256 channels), global pooling, a linear classifier."""

    def __init__(self, widths: tuple[int, int, int] = (64, 128, 256), classes: int = 10) -> None:
        super().__init__()
        w1, w2, w3 = widths
        self.features = nn.Sequential(
            _block(1, w1 // 2), _block(w1 // 2, w1), _block(w1, w1), nn.MaxPool2d(2),
            _block(w1, w2), _block(w2, w2), nn.MaxPool2d(2),
            _block(w2, w3), _block(w3, w3),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(w3, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


@lru_cache(maxsize=1)
def load_digits_split() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns (x_train, y_train, x_test, y_test): images as N x 1 x 32 x 32 in [0, 1]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = F.interpolate(images, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    labels = torch.tensor(digits.target, dtype=torch.long)
    idx_train, idx_test = train_test_split(
        torch.arange(len(labels)).numpy(), test_size=0.25, random_state=0, stratify=labels.numpy()
    )
    return images[idx_train], labels[idx_train], images[idx_test], labels[idx_test]


def train(epochs: int = 8, seed: int = 0, build: Callable[[], nn.Module] = DigitsCNN) -> nn.Module:
    """Returns the model ``build()`` makes (a DigitsCNN by default) trained on the training split
    (deterministic for a seed)."""
    torch.manual_seed(seed)
    x, y, _, _ = load_digits_split()
    model = build()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=epochs * ((len(x) + 31) // 32))
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x))
        for i in range(0, len(x), 32):
            b = order[i : i + 32]
            # small random shifts make the 1.3k training images go further
            xb = torch.roll(x[b], shifts=tuple(torch.randint(-2, 3, (2,)).tolist()), dims=(2, 3))
            loss = F.cross_entropy(model(xb), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


def load_model() -> DigitsCNN:
    """Returns the trained model, training and caching it once if no weights are shipped."""
    model = DigitsCNN()
    if not WEIGHTS.exists():
        trained = train()
        WEIGHTS.parent.mkdir(parents=True, exist_ok=True)
        tmp = WEIGHTS.with_suffix(".tmp")
        torch.save({k: v.half() if v.is_floating_point() else v for k, v in trained.state_dict().items()}, tmp)
        tmp.replace(WEIGHTS)
    state = torch.load(WEIGHTS, map_location="cpu", weights_only=True)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    return model.eval()


def accuracy(predict, images: torch.Tensor, labels: torch.Tensor, batch: int = 64) -> float:
    """Returns top-1 accuracy of ``predict`` over the images."""
    correct = 0
    for i in range(0, len(images), batch):
        correct += int((predict(images[i : i + batch]).argmax(1) == labels[i : i + batch]).sum())
    return correct / len(images)


def per_class_accuracy(predict, images: torch.Tensor, labels: torch.Tensor, batch: int = 64) -> dict[str, float]:
    """Returns top-1 accuracy overall and per class ("digit 0" .. "digit 9"): pruning can cost rare
    or hard classes far more than the average shows, and edgeprune reports and gates each slice."""
    predicted = torch.cat([predict(images[i : i + batch]).argmax(1) for i in range(0, len(images), batch)])
    correct = predicted == labels
    out = {"overall": int(correct.sum()) / len(labels)}
    for digit in range(10):
        mine = labels == digit
        out[f"digit {digit}"] = int(correct[mine].sum()) / int(mine.sum())
    return out


def workload() -> edgeprune.Workload:
    x_train, _, x_test, y_test = load_digits_split()
    return edgeprune.Workload(
        model=load_model(),
        example_inputs=(x_test[:1],),
        calibration=[(x_train[i : i + 16],) for i in range(0, 256, 16)],
        evaluate=lambda predict: per_class_accuracy(predict, x_test, y_test),
        finetune_data=[(x_train[i : i + 32],) for i in range(0, len(x_train), 32)],
        metric="accuracy",
        higher_is_better=True,
        name="digits_cnn",
    )


if __name__ == "__main__":
    import time

    start = time.perf_counter()
    model = load_model()
    _, _, xt, yt = load_digits_split()
    with torch.no_grad():
        print(f"test accuracy {accuracy(model, xt, yt):.4f} ({time.perf_counter() - start:.1f} s)")
