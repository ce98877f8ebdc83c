"""Latency measured on this machine with ONNX Runtime, when this machine stands in for the device."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from edgeprune.backends.onnx_tools import runtime as onnx_runtime
from edgeprune.host import Host, this_host
from edgeprune.profile import Profile
from edgeprune.target import check_measure_flags
from edgeprune.timing import LatencyStats, Protocol, time_side_by_side


@dataclass(frozen=True)
class StandIn:
    """Whether a measurement on this machine stands for the profile's device, and why.

    ``here``: measure on this machine; ``threads``: the runtime threads to time with (the
    profile's cores); ``reason``: why this machine stands in, or why not; ``differs``: with
    ``--measure-here``, how this machine differs from the profile (None when it does not).
    """

    here: bool
    reason: str
    threads: int | None = None
    host: str = ""
    measure_here: bool = False
    differs: str | None = None

    def to_dict(self) -> dict:
        """Returns the report's account of where latency was measured and why that counts."""
        section = {"host": self.host, "stands_in": self.reason, "threads": self.threads}
        if self.measure_here:
            section["measure_here"] = True
            section["differs"] = self.differs
        return section


def classes_for(precision: str) -> tuple[str, ...]:
    """Returns the kernel classes an artifact of a precision runs: int8 graphs keep fp32 operators."""
    # int4 weights (MatMulNBits) run int8 arithmetic on CPUs (accuracy level 4)
    return ("fp32", "int8") if precision in ("int8", "int4") else ("fp32",)


def stand_in(profile: Profile, precision: str, host: Host | None = None, measure_here: bool = False,
             threads: int | None = None) -> StandIn:
    """Returns whether this machine stands in for the profile's device for an artifact's precision.

    A CPU stands in only when it runs the same ONNX Runtime kernels (the same kernel class
    for every precision the artifact computes in) and has at least the profile's cores; it
    is then timed with the profile's core count as threads. A CPU with more or different
    instruction sets is not the device: its VNNI or AMX int8 kernels can be several times
    faster than the device's, and a budget proven on it would be a false pass.
    ``measure_here`` (``--measure-here``) is the user's word that this machine is the
    fleet; the report then says how it differs.
    """
    host = host or this_host()
    check_measure_flags(profile, measure_here, threads)
    if not profile.is_cpu or "onnx" not in profile.formats:
        return StandIn(False, f"this machine ({host.description}) is not a {profile.family} device", host=host.description)
    cores = profile.cores or host.cores
    differences = _differences(profile, precision, host)
    timed = min(threads or cores, host.cores)
    classes = ", ".join(f"{c} {host.kernel_class(c)}" for c in classes_for(precision))
    if not differences:
        counted = f"its {profile.cores} cores" if profile.cores else "no core count (all of this machine's are used)"
        return StandIn(True, f"this machine runs the kernels of profile {profile.name} ({classes}) and has at least "
                             f"{counted}; timed with {timed} threads", timed, host.description)
    why = "; ".join(differences)
    if measure_here:
        return StandIn(True, f"measured here at the user's word (--measure-here), timed with {timed} threads; this "
                             f"machine is not profile {profile.name}'s device: {why}", timed, host.description,
                       measure_here=True, differs=why)
    return StandIn(False, why, host=host.description)


def _differences(profile: Profile, precision: str, host: Host) -> list[str]:
    """Returns how this machine differs from the profile's device, in the user's terms."""
    found = []
    if profile.isa is not None and host.isa != profile.isa:
        return [f"this machine ({host.description}) is not {profile.isa}"]
    for cls in classes_for(precision):
        mine, theirs = host.kernel_class(cls), profile.kernel_class(cls)
        if theirs is None:
            found.append(f"profile {profile.name} states neither cpu_flags nor kernels.{cls}, so which {cls} kernels "
                         "its device runs is unknown")
        elif mine != theirs:
            found.append(f"this CPU runs {mine} {cls} kernels, profile {profile.name} {theirs}")
    if profile.cores is not None and host.cores < profile.cores:
        found.append(f"this machine has {host.cores} cores, profile {profile.name} {profile.cores}")
    return found


def onnx_runs(
    files: dict[str, Path],
    inputs: Sequence[torch.Tensor],
    threads: int | None = None,
    other_inputs: dict[str, Sequence[torch.Tensor]] | None = None,
) -> dict[str, Callable[[], object]]:
    """Returns, for each ONNX file, one run of it in its own ONNX Runtime session on this machine: on
    ``inputs``, or on its own in ``other_inputs`` (by the file's key)."""
    threads = threads or this_host().cores
    runs = {}
    for key, path in files.items():
        sess = onnx_runtime.session(path, threads)
        feed = onnx_runtime.feeds(sess, (other_inputs or {}).get(key, inputs))
        runs[key] = (lambda s=sess, f=feed: s.run(None, f))
    return runs


def measure_onnx_files(
    files: dict[str, Path],
    inputs: Sequence[torch.Tensor],
    threads: int | None = None,
    protocol: Protocol | None = None,
    other_inputs: dict[str, Sequence[torch.Tensor]] | None = None,
) -> dict[str, LatencyStats]:
    """Returns latency statistics for each ONNX file, timed side by side on this machine: each run on
    ``inputs``, or on its own in ``other_inputs`` (by the file's key)."""
    return time_side_by_side(onnx_runs(files, inputs, threads, other_inputs), protocol)


@contextmanager
def machine_lock() -> Iterator[None]:
    """Holds this machine's measurement lock (a file lock every edgeprune process takes to time here), so
    measurements on one machine run one at a time; pruning and lowering beside them are not held up."""
    path = Path(tempfile.gettempdir()) / f"edgeprune-measure-{os.getuid() if hasattr(os, 'getuid') else 0}.lock"
    try:
        import fcntl
    except ImportError:  # no POSIX file locks: measurements are not serialized
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def local_device(description: str | None = None) -> str:
    """Returns the label of this machine (or of the host described) for a report's latency.device."""
    return f"local: {description or this_host().description}"
