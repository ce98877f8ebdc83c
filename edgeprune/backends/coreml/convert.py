"""Converting a PyTorch model to a Core ML mlprogram: torch.export first, tracing as fallback.

Every aten operator of the captured graph is looked up in coremltools' own converter
registry before conversion starts, so an operator Core ML cannot lower is reported by name
(exit 2) instead of surfacing as a converter traceback halfway through.
"""

from __future__ import annotations

import contextlib
import io
import logging
import platform
import re
import warnings
from collections.abc import Iterator
from typing import Any

import torch

from edgeprune.errors import UnsupportedError, first_line

Inputs = tuple[torch.Tensor, ...]

# Core ML feature availability by OS release, counted as the iOS release of the same year
# (coremltools optimization guide, "What's new"): mlprogram from iOS15; sparse, palettized
# and int8 weights from iOS16; joint sparse+palettized / sparse+int8 and per-block int4 from iOS18.
MLPROGRAM, COMPRESSION, JOINT_COMPRESSION = 15, 16, 18
_OFFSET = {"ios": 0, "tvos": 0, "macos": 3, "watchos": 7}


def import_coremltools():
    """Returns the coremltools module, or raises UnsupportedError naming the extra to install."""
    try:
        with quiet():
            import coremltools
    except ImportError:
        raise UnsupportedError("format coreml needs coremltools: pip install edgeprune[coreml]") from None
    return coremltools


def target_level(name: str) -> int:
    """Returns the iOS release a deployment target ('iOS17', 'macOS14', ...) matches in features."""
    match = re.fullmatch(r"(iOS|macOS|tvOS|watchOS)(\d+)", name.strip(), flags=re.IGNORECASE)
    if not match:
        raise UnsupportedError(f"unknown Core ML deployment target {name!r} (e.g. iOS17, macOS14)")
    version = int(match.group(2))
    # From 2025 (version 26) every Apple OS shares one version number.
    return version if version >= 26 else version + _OFFSET[match.group(1).lower()]


def coreml_target(name: str) -> Any:
    """Returns coremltools' target for a deployment target name (ct.target.iOS17, ...)."""
    ct = import_coremltools()
    canonical = re.sub(r"(?i)^(ios|macos|tvos|watchos)", lambda m: {
        "ios": "iOS", "macos": "macOS", "tvos": "tvOS", "watchos": "watchOS"}[m.group(1).lower()], name.strip())
    target = getattr(ct.target, canonical, None)
    if target is None:
        raise UnsupportedError(f"coremltools {ct.__version__} has no deployment target {name}")
    return target


def unsupported_aten_ops(op_names: list[str]) -> list[str]:
    """Returns the operators (aten names) coremltools has no conversion for, in graph order."""
    import_coremltools()
    from coremltools.converters.mil.frontend.torch.torch_op_registry import _TORCH_OPS_REGISTRY

    missing: list[str] = []
    for name in op_names:
        if _TORCH_OPS_REGISTRY.get_func(name) is None and name not in missing:
            missing.append(name)
    return missing


def capture(model: torch.nn.Module, inputs: Inputs) -> tuple[Any, list[str], str]:
    """Returns (program, aten operator names, method): torch.export, else a TorchScript trace."""
    try:
        with quiet():
            program = torch.export.export(model.eval(), tuple(inputs)).run_decompositions({})
        ops = [_op_name(node.target) for node in program.graph.nodes if node.op == "call_function"]
        return program, ops, "torch.export"
    except Exception as export_error:  # data-dependent control flow and the like; tracing may still work
        try:
            with quiet(), torch.no_grad():
                traced = torch.jit.trace(model.eval(), tuple(inputs))
        except Exception as trace_error:
            raise UnsupportedError(
                f"cannot capture the model for Core ML: torch.export: {first_line(export_error, named=True)}; "
                f"tracing: {first_line(trace_error, named=True)}"
            ) from None
        ops = [node.kind() for node in traced.inlined_graph.nodes() if node.kind().startswith("aten::")]
        return traced, ops, "torch.jit.trace"


def check_operators(op_names: list[str]) -> None:
    """Raises UnsupportedError naming every operator Core ML cannot lower."""
    missing = unsupported_aten_ops(op_names)
    if missing:
        raise UnsupportedError(
            f"Core ML cannot lower operator {', '.join(missing)}: coremltools has no conversion for it; "
            "replace it in the model or register one with coremltools' register_torch_op"
        )


def convert(model: torch.nn.Module, inputs: Inputs, target_name: str, precision: str) -> tuple[Any, str]:
    """Returns (mlprogram model, capture method) for the model at the example inputs' shapes."""
    ct = import_coremltools()
    program, ops, method = capture(model, inputs)
    check_operators(ops)
    compute = ct.precision.FLOAT32 if precision == "fp32" else ct.precision.FLOAT16
    kwargs: dict[str, Any] = {
        "convert_to": "mlprogram", "minimum_deployment_target": coreml_target(target_name),
        "compute_precision": compute, "skip_model_load": platform.system() != "Darwin",
    }
    if method == "torch.jit.trace":
        names = ["input"] if len(inputs) == 1 else [f"input_{i}" for i in range(len(inputs))]
        kwargs["inputs"] = [ct.TensorType(name=n, shape=tuple(t.shape)) for n, t in zip(names, inputs, strict=True)]
    try:
        with quiet():
            mlmodel = ct.convert(program, **kwargs)
    except Exception as exc:  # the converter's own failure, reported in one line
        raise UnsupportedError(f"Core ML conversion failed ({method}): {first_line(exc, named=True)}") from None
    return mlmodel, method


def _op_name(target: Any) -> str:
    if hasattr(target, "name") and callable(target.name):
        return target.name()  # "aten::convolution"
    return getattr(target, "__name__", str(target))  # operator.getitem


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Keeps coremltools' progress bars, version warnings and import notices off the terminal, and the
    notices transformers logs while a model of its is traced (its logger writes past redirected stderr)."""
    logging.getLogger("coremltools").setLevel(logging.ERROR)
    hf = logging.getLogger("transformers")
    level = hf.level
    hf.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        hf.setLevel(level)
