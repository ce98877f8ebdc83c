"""Exporting a PyTorch model to an ONNX file that ONNX Runtime and TensorRT read."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import onnx
import torch

from edgeprune.errors import UnsupportedError

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

    The torch.export-based exporter is tried first; if it cannot trace the model, the
    TorchScript exporter is tried. If both fail, the error names the operator when the
    exporters do, and is an UnsupportedError (exit 2), reported before any later stage.
    """
    path = Path(path)
    model = model.eval()
    inputs = tuple(example_inputs)
    names = input_names(len(inputs))
    errors: list[str] = []
    for exporter in (_export_dynamo, _export_torchscript):
        try:
            with _quiet():
                exporter(model, inputs, path, names, dynamic_batch)
            onnx.checker.check_model(str(path))
            return path
        except Exception as exc:  # exporters raise many types; collect and report them together
            errors.append(f"{exporter.__name__.removeprefix('_export_')}: {_first_line(exc)}")
            path.unlink(missing_ok=True)
    raise UnsupportedError("cannot export the model to ONNX: " + "; ".join(errors))


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
    """Silences the exporters' progress prints and warnings (they are not the user's concern)."""
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]
