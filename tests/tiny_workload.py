"""A tiny CNN workload for tests that need a real build but not a real dataset."""

import torch
from torch import nn

import edgeprune


def workload() -> edgeprune.Workload:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    return edgeprune.Workload(model=model, example_inputs=(x[:1],), calibration=[(x,)], name="tiny")
