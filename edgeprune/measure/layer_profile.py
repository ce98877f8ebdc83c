"""Per-layer time: ONNX Runtime's own profiler on this machine, beside the estimator's per-kernel figures.

The profile runs in a session of its own after the latency was timed, so it never changes
the measured latency. ONNX Runtime writes a JSON trace (Chrome trace format) with one
``Node`` event per operator run; the time of a layer is the sum of its events' ``dur``
over the profiled runs (after warm-up), divided by the runs. Runtime node names are mapped
back to the estimator's fused kernels (ONNX Runtime names a fused node after its anchor or
its output tensor), so each row holds both: what this CPU spent and what the roofline
says the profile's device spends.
"""

from __future__ import annotations

import json
import re
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from edgeprune.backends import Artifact
from edgeprune.backends.onnx_tools import runtime as onnx_runtime
from edgeprune.measure.estimate import Estimate
from edgeprune.measure.local import StandIn
from edgeprune.profile import Profile

WARMUP_RUNS = 2
MAX_RUNS = 10
MIN_RUNS = 3
PROFILE_SECONDS = 0.5  # per graph: the profile is a picture of where time goes, not a timing
MAX_ROWS = 60
_SUFFIX = re.compile(r"(_kernel_time|_token_\d+|_nchwc|_fused|_output_0)$")


def profile_onnx_nodes(path: str | Path, inputs: Sequence[torch.Tensor | np.ndarray],
                       threads: int | None = None) -> tuple[dict[str, dict], int]:
    """Returns ({runtime node name: {"op", "ms"}}, runs): ms is the node's time per inference.

    A few runs after warm-up, as many as fit in PROFILE_SECONDS (at least MIN_RUNS).
    """
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="edgeprune-profile-") as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "ort")
        sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        feed = onnx_runtime.feeds(sess, inputs)
        start = time.perf_counter()
        for _ in range(WARMUP_RUNS):
            sess.run(None, feed)
        each = (time.perf_counter() - start) / WARMUP_RUNS
        runs = max(MIN_RUNS, min(MAX_RUNS, int(PROFILE_SECONDS / max(each, 1e-6))))
        for _ in range(runs):
            sess.run(None, feed)
        trace = json.loads(Path(sess.end_profiling()).read_text())
    return node_times(trace, WARMUP_RUNS), runs


def node_times(trace: list[dict], skip_runs: int) -> dict[str, dict]:
    """Returns {node name: {"op", "ms"}} per inference from an ONNX Runtime trace, the first runs left out."""
    windows = sorted((e["ts"], e["ts"] + e["dur"]) for e in trace
                     if e.get("cat") == "Session" and e.get("name") == "model_run")
    kept = windows[skip_runs:]
    if not kept:
        return {}
    totals: dict[str, dict] = {}
    for e in trace:
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith("_kernel_time"):
            continue
        if not any(lo <= e["ts"] <= hi for lo, hi in kept):
            continue
        name = e["name"][: -len("_kernel_time")]
        row = totals.setdefault(name, {"op": e.get("args", {}).get("op_name", "?"), "us": 0.0})
        row["us"] += float(e["dur"])
    return {name: {"op": row["op"], "ms": row["us"] / 1e3 / len(kept)} for name, row in totals.items()}


def _keys(name: str) -> list[str]:
    """Returns the names a runtime node may go by in the ONNX graph: itself, then with its suffixes stripped."""
    out = [name]
    while (stripped := _SUFFIX.sub("", out[-1])) != out[-1]:
        out.append(stripped)
    return out


def map_to_kernels(nodes: dict[str, dict], estimate: Estimate | None,
                   outputs: dict[str, Sequence[str]]) -> dict[str, dict]:
    """Returns runtime node times grouped by the estimator's kernel they belong to.

    ``outputs`` maps a kernel's name to its output tensors. A node the estimator has no kernel
    for (a layout reorder the runtime inserted) keeps its own stripped name.
    """
    lookup: dict[str, str] = {}
    for kernel in (estimate.kernels if estimate else ()):
        lookup.setdefault(kernel.name, kernel.name)
        for tensor in outputs.get(kernel.name, ()):
            lookup.setdefault(tensor, kernel.name)
            lookup.setdefault(tensor.removesuffix("_output_0"), kernel.name)
    grouped: dict[str, dict] = {}
    for name, row in nodes.items():
        keys = _keys(name)
        kernel = next((lookup[k] for k in keys if k in lookup), None)
        key = kernel or keys[-1]
        slot = grouped.setdefault(key, {"ops": [], "ms": 0.0, "matched": kernel is not None})
        slot["ms"] += row["ms"]
        if row["op"] not in slot["ops"]:
            slot["ops"].append(row["op"])
    return grouped


def layer_rows(built: dict[str, dict], dense: dict[str, dict] | None, built_est: Estimate | None,
               dense_est: Estimate | None) -> list[dict]:
    """Returns one row a layer: runtime ms built and dense, estimated ms built and dense, what bounds it.

    Rows follow the built graph's execution order; at most MAX_ROWS, the rest summed in one row.
    """
    est_built = {k.name: k for k in (built_est.kernels if built_est else ())}
    est_dense = {k.name: k for k in (dense_est.kernels if dense_est else ())}
    order = list(est_built) + [n for n in est_dense if n not in est_built]
    order += [n for n in [*built, *(dense or {})] if n not in order]
    order = list(dict.fromkeys(order))
    rows = []
    for name in order:
        b, d = built.get(name), (dense or {}).get(name)
        kb, kd = est_built.get(name), est_dense.get(name)
        if kb is not None and kb.ms == 0 and kd is None and b is None:
            continue  # a view (reshape, flatten): no kernel, no time
        ops = (kb or kd).ops if (kb or kd) else tuple((b or d or {}).get("ops", ()))
        rows.append({
            "layer": name, "ops": "+".join(ops),
            "built_ms": _ms(b), "dense_ms": _ms(d),
            "built_estimated_ms": round(kb.ms, 5) if kb else None,
            "dense_estimated_ms": round(kd.ms, 5) if kd else None,
            "bound": kb.bound if kb else (kd.bound if kd else None),
        })
    if len(rows) <= MAX_ROWS:
        return rows
    weight = sorted(rows, key=lambda r: -max(r["built_ms"] or 0, r["dense_ms"] or 0,
                                              r["built_estimated_ms"] or 0, r["dense_estimated_ms"] or 0))
    keep = {id(r) for r in weight[: MAX_ROWS - 1]}
    rest = [r for r in rows if id(r) not in keep]
    other = {"layer": f"(other {len(rest)} layers)", "ops": "", "bound": None}
    for key in ("built_ms", "dense_ms", "built_estimated_ms", "dense_estimated_ms"):
        values = [r[key] for r in rest if r[key] is not None]
        other[key] = round(sum(values), 5) if values else None
    return [r for r in rows if id(r) in keep] + [other]


def _ms(row: dict | None) -> float | None:
    return round(row["ms"], 5) if row else None


def layer_profile(artifact: Artifact, model: torch.nn.Module, inputs: Sequence[torch.Tensor], baseline: Path,
                  same_as_baseline: bool, profile: Profile, here: StandIn) -> dict:
    """Returns the report's ``layers`` section: per-layer runtime profile here and estimate on the profile.

    ``baseline`` is the dense model's ONNX graph (``same_as_baseline``: the artifact is it).
    ``here`` says whether this machine stands in for the profile's device; where it does not,
    the section is labelled a host profile: where time goes on this CPU, not on the device.
    An artifact that cannot run here (Core ML, a TensorRT engine) gets the estimate alone.
    """
    from edgeprune.host import this_host
    from edgeprune.measure.latency import baseline_precision, estimate_graph

    shapes = [tuple(int(d) for d in t.shape) for t in inputs]
    host = here.host or this_host().description
    threads = here.threads or this_host().cores
    section: dict = {"machine": host, "threads": threads, "estimate_profile": profile.name}
    if here.here:
        section["on_target"] = True
        section["note"] = f"profiled on this machine, which stands in for profile {profile.name}: {here.reason}"
    else:
        section["on_target"] = False
        section["note"] = (f"host profile: ONNX Runtime on this machine ({host}), not on profile {profile.name}'s "
                           f"device ({here.reason}); the estimate columns are for the device")
    with tempfile.TemporaryDirectory(prefix="edgeprune-layers-") as tmp:
        graph, precision = estimate_graph(artifact, model, inputs, Path(tmp))
        built_est, built_out = _estimate(graph, shapes, profile, precision)
        base_precision = baseline_precision(profile)
        dense_est, dense_out = (built_est, built_out) if same_as_baseline else _estimate(
            baseline, shapes, profile, None if base_precision == "fp32" else base_precision)
    runnable = artifact.measure_path is not None and Path(artifact.measure_path).suffix == ".onnx"
    built: dict[str, dict] = {}
    dense: dict[str, dict] | None = None
    if runnable:
        import onnxruntime

        nodes, runs = profile_onnx_nodes(artifact.measure_path, inputs, threads)
        built = map_to_kernels(nodes, built_est, built_out)
        if same_as_baseline:
            dense = built
        else:
            dense_nodes, _ = profile_onnx_nodes(baseline, inputs, threads)
            dense = map_to_kernels(dense_nodes, dense_est, dense_out)
        section.update({"source": "measured", "runtime": "onnxruntime " + onnxruntime.__version__,
                        "profiler": "onnxruntime SessionOptions.enable_profiling: sum of each node's dur per run",
                        "runs": runs, "warmup_runs": WARMUP_RUNS,
                        "built_ms": round(sum(r["ms"] for r in built.values()), 5),
                        "dense_ms": round(sum(r["ms"] for r in dense.values()), 5)})
    else:
        section.update({"source": "estimated",
                        "note": f"{artifact.format} artifacts cannot run on this machine: per-layer figures are "
                                f"the estimate for profile {profile.name} alone"})
        section.pop("threads")
    if built_est is not None:
        section["built_estimated_ms"] = round(built_est.ms, 5)
        section["dense_estimated_ms"] = round(dense_est.ms, 5) if dense_est else None
    section["rows"] = layer_rows(built, dense, built_est, dense_est)
    return section


def _estimate(graph: Path, shapes: list[tuple[int, ...]], profile: Profile,
              precision: str | None) -> tuple[Estimate | None, dict[str, list[str]]]:
    """Returns the estimator's kernels for a graph and each kernel's output tensors (None if it cannot follow it)."""
    from edgeprune.measure.estimate import estimate_graph as estimate_lowered
    from edgeprune.measure.graph import lowered_graph

    try:
        lowered = lowered_graph(graph, shapes)
        return estimate_lowered(lowered, profile, precision), {k.name: list(k.outputs) for k in lowered.kernels}
    except Exception:  # an operator the estimator cannot follow: the runtime profile still stands
        return None, {}
