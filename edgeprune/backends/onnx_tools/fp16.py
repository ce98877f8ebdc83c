"""fp16 conversion of an ONNX file: fp16 weights and compute, fp32 inputs and outputs."""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import onnx


def convert_fp16(src: Path, dst: Path) -> Path:
    """Returns ``dst`` after writing the fp16 model of ``src`` there.

    Uses ONNX Runtime's float16 converter. Inputs and outputs stay fp32 (one cast at each
    end) so callers feed the same tensors as for the fp32 model; operators the converter
    knows to be unsafe in fp16 (its default block list) stay fp32 inside casts.
    """
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src))
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        converted = convert_float_to_float16(model, keep_io_types=True)
    _sort_nodes(converted.graph)
    onnx.save(converted, str(dst))
    onnx.checker.check_model(str(dst))
    return dst


def _sort_nodes(graph: onnx.GraphProto) -> None:
    """Puts the nodes in topological order (the converter appends its input casts last)."""
    ready = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending = list(graph.node)
    ordered: list[onnx.NodeProto] = []
    while pending:
        progress = [n for n in pending if all(name in ready for name in n.input)]
        if not progress:  # a cycle or a dangling input: leave the rest as they were
            ordered += pending
            break
        for node in progress:
            ordered.append(node)
            ready.update(node.output)
        pending = [n for n in pending if n not in progress]
    graph.ClearField("node")
    graph.node.extend(ordered)
