"""A workload split into two files: the model lives in a helper module beside it."""

import torch
from tiny_model import make

import edgeprune


def workload():
    return edgeprune.Workload(model=make(), example_inputs=(torch.zeros(1, 3, 8, 8),), name="helper")
