"""Running an ONNX file with ONNX Runtime on this machine."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch


def session(path: str | Path, threads: int | None = None, optimized_model_path: str | None = None,
            reference: bool = False, profile_prefix: str | None = None):
    """Returns an ONNX Runtime CPU session for the file, all graph optimizations on.

    reference: Q/DQ pairs stay unfused, so int8 models compute the reference math (dequantize,
    then fp32) instead of this CPU's integer kernels. That is how a model meant for another
    runtime (TensorRT) is checked here. profile_prefix: ONNX Runtime's profiler writes its file there.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if reference:
        options.add_session_config_entry("session.disable_quant_qdq", "1")
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if optimized_model_path:
        options.optimized_model_filepath = optimized_model_path
    if profile_prefix:
        options.enable_profiling, options.profile_file_prefix = True, profile_prefix
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def op_times_ms(path: str | Path, feed: dict[str, np.ndarray], threads: int | None, runs: int) -> dict[str, float]:
    """Returns the milliseconds a run spends in each kind of operator ONNX Runtime runs (its optimized graph's
    op types, from its own profiler: the median over ``runs`` runs after two warm-up runs)."""
    import json
    import os
    import tempfile

    with tempfile.TemporaryDirectory(prefix="edgeprune-ort-profile-") as tmp:
        sess = session(path, threads, profile_prefix=os.path.join(tmp, "run"))
        for _ in range(runs + 2):
            sess.run(None, feed)
        with open(sess.end_profiling()) as f:
            events = json.load(f)
    per_run: list[dict[str, float]] = []
    current: dict[str, float] = {}
    for event in events:  # a run's nodes are written as they finish, then the run itself
        if event.get("cat") == "Session" and event.get("name") == "model_run":
            per_run.append(current)
            current = {}
        elif event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            op = event.get("args", {}).get("op_name", "?")
            current[op] = current.get(op, 0.0) + event["dur"] / 1e3
    timed = per_run[2:] or per_run  # the warm-up runs left out
    ops = {op for run in timed for op in run}
    return {op: float(np.median([run.get(op, 0.0) for run in timed])) for op in ops}


def feeds(sess, inputs: Sequence[torch.Tensor | np.ndarray]) -> dict[str, np.ndarray]:
    """Returns the session's input dict for a tuple of tensors, cast to the declared types."""
    out = {}
    for meta, value in zip(sess.get_inputs(), inputs, strict=True):
        array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        if meta.type == "tensor(float16)":
            array = array.astype(np.float16)
        elif meta.type == "tensor(float)":
            array = array.astype(np.float32)
        out[meta.name] = array
    return out


def fixed_batch(sess) -> int | None:
    """Returns the batch size the model's first input is fixed to, or None when its batch axis is free."""
    shape = sess.get_inputs()[0].shape
    return shape[0] if shape and isinstance(shape[0], int) and shape[0] > 0 else None


def predictor(path: str | Path, threads: int | None = None, reference: bool = False):
    """Returns ``predict(*inputs) -> torch.Tensor`` (first output, as float32) for the file.

    A model whose batch axis is fixed (an exporter pinned it, or the format wants static
    shapes) is run in blocks of that batch, so verification and scoring see every input
    at the batch the artifact accepts.
    """
    sess = session(path, threads, reference=reference)
    batch = fixed_batch(sess)

    def run(inputs) -> np.ndarray:
        return np.asarray(sess.run(None, feeds(sess, inputs))[0], dtype=np.float32)

    def predict(*inputs: torch.Tensor) -> torch.Tensor:
        rows = inputs[0].shape[0] if inputs and inputs[0].dim() else None
        if batch is None or rows is None or rows == batch or rows % batch:
            return torch.from_numpy(run(inputs))
        return torch.from_numpy(np.concatenate([run([t[i:i + batch] for t in inputs]) for i in range(0, rows, batch)]))

    return predict
