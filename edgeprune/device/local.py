"""The local device: ONNX Runtime (and, where they run, Core ML or TensorRT) on this machine, as a Device.

It times what an agent times, the same way (device/runtimes.py loads, timing.py times side by
side), without the upload: `bench` without --device uses it, and the agent's server times the
models it unpacked with ``time_models``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgeprune import __version__
from edgeprune.device import runtimes
from edgeprune.device.wire import RUNTIMES
from edgeprune.errors import InputError
from edgeprune.host import this_host
from edgeprune.timing import Protocol, time_side_by_side
from edgeprune.uploads import UploadModel


def time_models(models: Sequence[tuple[str, Path, str, str, str]], inputs: Sequence[np.ndarray], threads: int,
                protocol: Protocol | None) -> tuple[dict[str, dict], float]:
    """Returns each model's latency statistics (and its runtime), timed side by side, and the seconds it took.

    ``models``: (role, path, format, runtime, precision). runtimes.BadArtifact or RuntimeFailure
    name the role whose model cannot be loaded or run.
    """
    loaded: dict[str, runtimes.Loaded] = {}
    for role, path, fmt, runtime, precision in models:
        try:
            loaded[role] = runtimes.load(path, fmt, runtime, inputs, threads, precision)
        except runtimes.BadArtifact as exc:
            raise runtimes.BadArtifact(f"{role}: {exc}") from None
        except runtimes.RuntimeFailure as exc:
            raise runtimes.RuntimeFailure(f"{role}: {exc}") from None
    start = time.perf_counter()
    stats = time_side_by_side({role: m.run for role, m in loaded.items()}, protocol)
    seconds = time.perf_counter() - start
    return {role: {**stats[role].to_dict(), "runtime": loaded[role].runtime} for role in loaded}, seconds


class LocalDevice:
    """This machine as a Device: models are timed where they lie, by this process."""

    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads or this_host().cores
        self.runtimes = runtimes.available_runtimes()
        self.device = runtimes.device_description()

    def info(self) -> dict:
        return {"agent": f"edgeprune {__version__} (local)", "protocol": 1, "device": self.device,
                "hardware": self.device, "runtimes": self.runtimes, "threads": self.threads,
                "formats": {fmt: [r for r in rts if r in self.runtimes] for fmt, rts in RUNTIMES.items()}}

    def identity(self) -> list:
        return [self.device, self.threads, sorted(self.runtimes.items())]

    def _runtime(self, model: UploadModel) -> str:
        runtime = model.runtime or next((r for r in RUNTIMES.get(model.format, ()) if r in self.runtimes), None)
        if runtime is None or runtime not in self.runtimes:
            raise InputError(f"{model.path.name} cannot run on this machine (its runtimes: "
                             f"{', '.join(self.runtimes)}): measure it on the device with --device URL")
        return runtime

    def measure(self, models: Sequence[UploadModel], inputs: Sequence[np.ndarray], threads: int | None = None,
                protocol: Protocol | None = None) -> dict:
        threads = min(threads or self.threads, this_host().cores)
        try:
            results, seconds = time_models([(m.role, Path(m.path), m.format, self._runtime(m), m.precision)
                                            for m in models], inputs, threads, protocol)
        except (runtimes.BadArtifact, runtimes.RuntimeFailure) as exc:
            path = next((m.path for m in models if str(exc).startswith(f"{m.role}: ")), models[0].path)
            raise InputError(f"{path}: {str(exc).partition(': ')[2]}") from None
        return {"device": f"local: {this_host().description}", "agent": None, "threads": threads,
                "seconds": round(seconds, 3), "results": results}

    def measure_generation(self, models: Sequence[UploadModel], prompt: int, gen: int, repeats: int = 1,
                           threads: int | None = None) -> dict:
        from edgeprune.device.decode_loop import side_by_side

        start = time.perf_counter()
        try:
            figures = side_by_side({m.role: Path(m.path) for m in models}, prompt, gen, threads, repeats)
        except RuntimeError as exc:
            raise InputError(f"{models[0].path}: {exc}") from None
        return {"device": f"local: {this_host().description}", "agent": None, "threads": threads,
                "seconds": round(time.perf_counter() - start, 3), "results": figures}
