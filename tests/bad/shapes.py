"""Workloads whose inputs or outputs do not fit the model (one function each)."""

import math

import torch
from torch import nn

import edgeprune


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


class Dict(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = _model()

    def forward(self, x):
        return {"out": self.inner(x)}


def wrong_example():
    return edgeprune.Workload(model=_model(), example_inputs=(torch.zeros(1, 1, 8, 8),), name="wrong_example")


def wrong_dtype():
    return edgeprune.Workload(model=_model(), example_inputs=(torch.zeros(1, 3, 8, 8, dtype=torch.long),))


def wrong_calibration():
    return edgeprune.Workload(model=_model(), example_inputs=(torch.zeros(1, 3, 8, 8),),
                              calibration=[(torch.zeros(4, 5, 8, 8),)])


def returns_dict():
    return edgeprune.Workload(model=Dict(), example_inputs=(torch.zeros(1, 3, 8, 8),))


def _scored(value):
    return edgeprune.Workload(model=_model(), example_inputs=(torch.zeros(1, 3, 8, 8),),
                              calibration=[(torch.rand(4, 3, 8, 8),)], evaluate=lambda predict: value)


def evaluate_string():
    return _scored("high")


def evaluate_none():
    return _scored(None)


def evaluate_nan():
    return _scored(math.nan)


def evaluate_inf():
    return _scored(math.inf)


def evaluate_raises():
    w = _scored(0.0)
    w.evaluate = lambda predict: 1 / 0
    return w


def fails():
    raise ValueError("no data here")


def not_a_workload():
    return 42
