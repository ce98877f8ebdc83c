"""A workload whose model's forward raises."""

import torch
from torch import nn

import edgeprune


class Broken(nn.Module):
    def forward(self, x):
        raise RuntimeError("this model is broken")


def workload():
    return edgeprune.Workload(model=Broken(), example_inputs=(torch.zeros(1, 3, 8, 8),), name="broken")
