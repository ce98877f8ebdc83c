"""Exporting a PyTorch model to an ONNX file that ONNX Runtime and TensorRT read."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import onnx
import torch

from edgeprune.backends.onnx_tools.export_cache import EXPORTS, fingerprint
from edgeprune.errors import UnsupportedError, first_line

OPSET = 18


def input_names(count: int) -> list[str]:
    """Returns the ONNX input names edgeprune gives a model with ``count`` inputs."""
    return ["input"] if count == 1 else [f"input_{i}" for i in range(count)]


def export_onnx(
    model: torch.nn.Module,
    example_inputs: Sequence[torch.Tensor],
    path: str | Path,
    dynamic_batch: bool = True,
) -> Path:
    """Returns ``path`` after writing the model there as one self-contained ONNX file.

    The TorchScript exporter is tried first (a fraction of a second where torch.export takes
    seconds, which adds up over a search's candidates); if it cannot convert the model, the
    torch.export-based exporter is tried. Every artifact is verified against PyTorch either
    way. If both fail, the error names the operators the exporters could not convert, and is
    an UnsupportedError (exit 2), reported before any later stage.

    With ``dynamic_batch``, a batch-1 example is traced on two rows first: both exporters pin
    an axis whose example size is 1 (a transformer's reshapes then bake batch 1 into the
    graph, and it cannot score an evaluation batch). A model that runs only at batch 1 is
    exported from the example as it is.
    """
    path = Path(path)
    model = model.eval()
    inputs = tuple(example_inputs)
    names = input_names(len(inputs))
    key = fingerprint(model, inputs, f"opset={OPSET}|dynamic_batch={dynamic_batch}")
    if EXPORTS.get(key, path) is not None:
        return path
    errors: list[str] = []
    operators: list[str] = []
    widened = _two_rows(inputs) if dynamic_batch else None
    for traced in ([widened, inputs] if widened is not None else [inputs]):
        for exporter in (_export_torchscript, _export_dynamo):
            try:
                with _quiet():
                    exporter(model, traced, path, names, dynamic_batch)
                onnx.checker.check_model(str(path))
                EXPORTS.put(key, path)
                return path
            except Exception as exc:  # exporters raise many types; collect and report them together
                errors.append(f"{exporter.__name__.removeprefix('_export_')}: {first_line(exc, named=True)}")
                operators += [op for op in unsupported_operators(exc) if op not in operators]
                path.unlink(missing_ok=True)
    if operators:
        raise UnsupportedError(
            f"cannot export the model to ONNX: no ONNX conversion for operator {', '.join(operators)} "
            f"(opset {OPSET}); replace it in the model or register a conversion"
        )
    raise UnsupportedError("cannot export the model to ONNX: " + "; ".join(errors))


def _two_rows(inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...] | None:
    """Returns the batch-1 example repeated to two rows (None when the batch is already wider)."""
    if not inputs or any(t.dim() == 0 or t.shape[0] != 1 for t in inputs):
        return None
    return tuple(t.expand(2, *t.shape[1:]).contiguous() for t in inputs)


# How the two exporters name an operator they cannot convert.
_OPERATOR_PATTERNS = (
    re.compile(r"No ONNX function found for <OpOverload\(op='([\w.]+)'"),
    re.compile(r"Exporting the operator '([\w:.]+)' to ONNX"),
    re.compile(r"Unsupported FX nodes: \{'([\w.:]+)'"),
)


def unsupported_operators(exc: BaseException) -> list[str]:
    """Returns the operator names an exporter's exception (or its causes) says it cannot convert."""
    found: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        for pattern in _OPERATOR_PATTERNS:
            for name in pattern.findall(str(current)):
                if name not in found:
                    found.append(name)
        current = current.__cause__ or current.__context__
    return found


def _export_dynamo(model, inputs, path, names, dynamic_batch) -> None:
    dynamic = None
    if dynamic_batch:
        batch = torch.export.Dim("batch", min=1, max=4096)
        dynamic = tuple({0: batch} for _ in inputs)
    torch.onnx.export(
        model, inputs, str(path), dynamo=True, external_data=False, opset_version=OPSET,
        input_names=names, output_names=["output"], dynamic_shapes=dynamic, verbose=False,
        optimize=True,
    )


def _export_torchscript(model, inputs, path, names, dynamic_batch) -> None:
    axes = {n: {0: "batch"} for n in [*names, "output"]} if dynamic_batch else None
    torch.onnx.export(
        model, inputs, str(path), dynamo=False, opset_version=OPSET,
        input_names=names, output_names=["output"], dynamic_axes=axes,
    )


@contextlib.contextmanager
def _quiet():
    """Silences the exporters' progress prints and warnings (they are not the user's concern).

    The TorchScript exporter prints the whole graph from C++ when it fails (to stdout), so
    both standard streams are redirected at the file-descriptor level, not only sys.std*.
    """
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    stdout, stderr = sys.stdout, sys.stderr
    with (warnings.catch_warnings(), _fd_to_devnull(stdout), _fd_to_devnull(stderr),
          contextlib.redirect_stdout(io.StringIO())):
        warnings.simplefilter("ignore")
        yield


@contextlib.contextmanager
def _fd_to_devnull(stream):
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):  # a captured stream without a descriptor
        yield
        return
    stream.flush()
    saved = os.dup(fd)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
        yield
    finally:
        stream.flush()
        os.dup2(saved, fd)
        os.close(saved)
        os.close(devnull)
