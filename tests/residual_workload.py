"""A small residual CNN (the zoo's ResNet: residual sums, strided 1x1 shortcuts, a grouped conv) as a workload,
for searches whose int8 may or may not pay on the profile's device."""

import sys
from pathlib import Path

import edgeprune

sys.path.insert(0, str(Path(__file__).resolve().parent))
from zoo import calibration, resnet  # noqa: E402


def workload() -> edgeprune.Workload:
    model, inputs = resnet()
    return edgeprune.Workload(model=model, example_inputs=inputs, calibration=calibration(inputs), name="residual")
