"""The digits CNN scored by its mean cross-entropy on the test split: a metric fine enough to see int8."""

import importlib.util
from pathlib import Path

import torch
import torch.nn.functional as F

_spec = importlib.util.spec_from_file_location(
    "digits_cnn_example", Path(__file__).resolve().parent.parent / "examples" / "digits_cnn.py")
digits = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(digits)


def loss(predict, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Returns the mean cross-entropy of ``predict`` over the images (lower is better)."""
    return float(sum(F.cross_entropy(predict(images[i:i + 60]), labels[i:i + 60], reduction="sum")
                     for i in range(0, len(images), 60)) / len(images))


def workload():
    w = digits.workload()
    _, _, x_test, y_test = digits.load_digits_split()
    w.evaluate = lambda predict: loss(predict, x_test, y_test)
    w.metric, w.higher_is_better, w.name = "cross_entropy", False, "digits_loss"
    return w
