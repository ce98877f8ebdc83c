"""Latency measured on this machine with ONNX Runtime, when this machine is the device."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from edgeprune.backends import onnx_runtime
from edgeprune.host import this_host
from edgeprune.measure.protocol import LatencyStats, Protocol, time_side_by_side
from edgeprune.profile import Profile


def host_mismatch(profile: Profile) -> str | None:
    """Returns why this machine is not the profile's device, or None if it stands in for it.

    Only a CPU profile can be measured here, and only when this CPU has every instruction
    set the profile names: measuring an AVX2 laptop for a VNNI server would be a lie.
    """
    host = this_host()
    if profile.family not in ("x86", "arm", "custom") or "onnx" not in profile.formats:
        return f"this machine ({host.description}) is not a {profile.family} device"
    if profile.family == "x86" and not host.is_x86:
        return f"this machine ({host.description}) is not x86"
    missing = sorted(set(profile.cpu_flags) - host.flags)
    if missing:
        return f"this CPU lacks {', '.join(missing)}, which profile {profile.name} has"
    return None


def measure_onnx_files(
    files: dict[str, Path],
    inputs: Sequence[torch.Tensor],
    threads: int | None = None,
    protocol: Protocol | None = None,
) -> dict[str, LatencyStats]:
    """Returns latency statistics for each ONNX file, timed side by side on this machine."""
    threads = threads or this_host().cores
    runs = {}
    for key, path in files.items():
        sess = onnx_runtime.session(path, threads)
        feed = onnx_runtime.feeds(sess, inputs)
        runs[key] = (lambda s=sess, f=feed: s.run(None, f))
    return time_side_by_side(runs, protocol)


def local_device() -> str:
    """Returns the label of this machine for a report's latency.device."""
    return f"local: {this_host().description}"
