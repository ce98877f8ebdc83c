"""What every backend declares and returns: precisions, sparsity storage, the artifact."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from edgeprune.errors import UnsupportedError
from edgeprune.measurements import Latency
from edgeprune.profile import Profile
from edgeprune.uploads import UploadModel
from edgeprune.verify import Verification

Inputs = tuple[torch.Tensor, ...]


@dataclass(frozen=True)
class LowerRequest:
    """What the build asks a backend for.

    precision: fp32, fp16 or int8. sparsity: the pruning kind whose zeros the artifact
    should store compactly (none, structured, unstructured, nm). palettize: weight bits of a
    lookup-table (palettized) weight encoding, for formats that store one (Core ML).
    options: backend-specific knobs, e.g. ``int8_mode`` ("static" or "dynamic") for ONNX.
    """

    precision: str
    profile: Profile
    calibration: Sequence[Inputs] = ()
    sparsity: str = "none"
    nm: tuple[int, int] = (2, 4)
    palettize: int | None = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class Artifact:
    """A lowered model on disk and what is known about it.

    path: the file or package the device runs. measure_path: an ONNX file this machine can
    time when the artifact itself cannot run here (None if nothing can). notes: what a user
    should know (a fusion that did not happen, a check that could only be structural).
    evaluated_on: what the backend's predictor runs, when that is not the artifact itself
    (the TensorRT bundle's ONNX under ONNX Runtime when no GPU is here). tolerance: the
    verification tolerance key when it is not the precision (4-bit palettized weights).
    latency: a latency section the backend measured on its own runtime (a TensorRT engine
    on this GPU), used instead of timing ``measure_path`` with ONNX Runtime.
    reference: an ONNX file that computes what the artifact computes, run here in reference
    math when the artifact itself cannot run (the TensorRT bundle's batch-free twin).
    engine: a compiled engine built on this machine, run by the predictor when present.
    scratch: a temporary folder holding ``reference`` outside the shipped files; it lives
    as long as the artifact does.
    """

    format: str
    precision: str
    path: Path
    files: list[Path] = field(default_factory=list)
    measure_path: Path | None = None
    notes: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    evaluated_on: str = "artifact"
    tolerance: str | None = None
    latency: Latency | None = None
    reference: Path | None = None
    engine: Path | None = None
    scratch: Any = field(default=None, repr=False, compare=False)
    task: str | None = None  # the workload kind a backend of its own lowered it for (a causal LM's decoder)

    @property
    def size_bytes(self) -> int:
        if self.path.is_dir():
            return sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())
        return self.path.stat().st_size


class Backend(Protocol):
    """A runtime format: lowers a PyTorch model and, where it can, runs the artifact here."""

    name: str
    precisions: frozenset[str]
    sparsity_storage: frozenset[str]
    computes_int8: bool  # int8 arithmetic at run time, not only int8 storage

    def check(self, request: LowerRequest) -> None:
        """Raises UnsupportedError if the request cannot be served, before any work starts."""

    def preflight(self, model: torch.nn.Module, example_inputs: Inputs, request: LowerRequest) -> None:
        """Raises UnsupportedError naming an operator the format cannot lower.

        The build calls it before pruning, so a model the format cannot take fails in seconds.
        """

    def lower(self, model: torch.nn.Module, example_inputs: Inputs, request: LowerRequest, out_dir: Path) -> Artifact:
        """Returns the artifact written into out_dir."""

    def predictor(self, artifact: Artifact) -> Callable[..., torch.Tensor] | None:
        """Returns predict(*inputs) running the artifact on this machine, or None if it cannot."""

    def cannot_run_reason(self) -> str | None:
        """Returns why artifacts of this format cannot run on this machine, or None if they can."""

    def verify_structure(self, artifact: Artifact, model: torch.nn.Module, request: LowerRequest) -> Verification:
        """Returns what can be checked without running the artifact (spec, storage, bit widths)."""

    def upload(self, artifact: Artifact) -> UploadModel:
        """Returns what a device agent is sent to time the artifact: the file, its agent format and runtime."""


_BACKENDS: dict[tuple[str, str | None], Backend] = {}


def register_backend(name: str, task: str | None = None) -> Callable[[type], type]:
    """Registers a backend class for a format name (and a workload kind, when it lowers only that kind).

    Backends are stateless, so one instance serves all; everything a backend learns while
    lowering (a twin graph, an engine) lives in the Artifact. A task's own backend (a causal
    LM's decoder) is found before the format's general one.
    """

    def wrap(cls: type) -> type:
        _BACKENDS[(name, task)] = cls()
        return cls

    return wrap


def get_backend(name: str, task: str | None = None) -> Backend:
    """Returns the backend for a format name: the task's own if one is registered, else the format's."""
    if (name, task) in _BACKENDS:
        return _BACKENDS[(name, task)]
    if (name, None) not in _BACKENDS:
        raise UnsupportedError(f"unknown format {name!r}; formats: {', '.join(known_formats())}")
    return _BACKENDS[(name, None)]


@contextmanager
def backend_replaced(name: str, backend: Backend, task: str | None = None) -> Iterator[Backend]:
    """Serves ``backend`` for a format name inside the block (a runtime the user wraps or a test's)."""
    previous = _BACKENDS.get((name, task))
    _BACKENDS[(name, task)] = backend
    try:
        yield backend
    finally:
        if previous is None:
            _BACKENDS.pop((name, task), None)
        else:
            _BACKENDS[(name, task)] = previous


def serves_task(name: str, task: str) -> bool:
    """Returns whether a format has a backend of its own for a workload kind (a causal LM's decoder)."""
    return (name, task) in _BACKENDS


def known_formats() -> list[str]:
    """Returns the registered format names."""
    return sorted({name for name, _ in _BACKENDS})


def check_palettize(backend: Backend, request: LowerRequest) -> None:
    """Raises UnsupportedError when palettized weights are asked of a format that has none."""
    if request.palettize is not None and "palettized" not in backend.sparsity_storage:
        raise UnsupportedError(
            f"format {backend.name} has no palettized (lookup-table) weights; --palettize is for --format coreml"
        )


def dense_storage_note(backend: Backend, request: LowerRequest) -> str | None:
    """Returns a note when the format stores the plan's zeros as ordinary dense weights."""
    if request.sparsity in ("none", "structured") or request.sparsity in backend.sparsity_storage:
        return None
    return (f"{backend.name} stores {request.sparsity} zeros as ordinary dense weights: "
            "no size or speed gain from them in this format")


def check_precision(backend: Backend, request: LowerRequest) -> None:
    """Raises UnsupportedError when the backend or the profile cannot take the precision."""
    if request.precision not in backend.precisions:
        raise UnsupportedError(
            f"format {backend.name} does not support precision {request.precision} "
            f"(supports: {', '.join(sorted(backend.precisions))})"
        )
    if request.precision not in request.profile.precisions:
        raise UnsupportedError(
            f"profile {request.profile.name} does not run {request.precision} "
            f"(its precisions: {', '.join(request.profile.precisions)})"
        )
