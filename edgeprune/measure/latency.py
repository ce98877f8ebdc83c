"""The latency stage: an artifact measured on the device, on this machine where it stands in, or estimated.

Every latency comes with the roofline estimate of the same graph (``estimated_ms``), so the
estimator's error shows wherever a measurement exists, and with the peak memory of one
inference. A search times candidates quickly; the build times the chosen one side by side
with the dense baseline, and once more when one round cannot decide the budget.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from edgeprune.backends import Artifact, get_backend
from edgeprune.backends.onnx_tools.export import export_onnx
from edgeprune.backends.onnx_tools.fusion import unfused_nodes
from edgeprune.device.protocol import Device
from edgeprune.gate import Budgets, latency_undecided
from edgeprune.host import Host
from edgeprune.measure.estimate import estimate_swing
from edgeprune.measure.local import (
    StandIn,
    local_device,
    machine_lock,
    measure_onnx_files,
    stand_in,
)
from edgeprune.measurements import ESTIMATED, MEASURED, UNAVAILABLE, Latency, Memory
from edgeprune.profile import Profile
from edgeprune.timing import LatencyStats, Protocol
from edgeprune.uploads import UploadModel

# A search's timing of one candidate: short, the final build measures the chosen one properly.
SEARCH_PROTOCOL = Protocol(warmup_s=0.1, round_s=0.1, min_rounds=5, max_rounds=12)


@dataclass(frozen=True)
class Timing:
    """Where and how latencies are obtained for one build.

    ``final``: the build's own measurement, side by side with the dense baseline and repeated
    when one round cannot decide the budget; otherwise a search's quick timing of a candidate.
    """

    profile: Profile
    budgets: Budgets
    host: Host | None = None
    measure_here: bool = False
    threads: int | None = None
    agent: Device | None = None
    final: bool = True

    def stand_in(self, precision: str) -> StandIn:
        return stand_in(self.profile, precision, self.host, self.measure_here, self.threads)


def latency_of(timing: Timing, artifact: Artifact, model: torch.nn.Module, inputs: Sequence[torch.Tensor],
               baseline: Path, same_as_baseline: bool) -> tuple[Latency, Memory]:
    """Returns the latency and memory of an artifact of ``model``.

    ``baseline`` is the dense model's ONNX graph (the speed-up is against it); it is the
    artifact itself when ``same_as_baseline``. Latency is the backend's own timing when it has
    one (an engine on this GPU), else measured on the agent, else measured here when this
    machine stands in for the profile's device (``--measure-here`` says it does), else estimated.
    """
    profile = timing.profile
    shapes = tuple(tuple(int(d) for d in t.shape) for t in inputs)
    here = timing.stand_in(artifact.precision)
    reason = None if here.here else here.reason
    if reason is None and artifact.measure_path is None:
        reason = f"{artifact.format} artifacts cannot run on this machine"
    with tempfile.TemporaryDirectory(prefix="edgeprune-latency-") as tmp:
        graph, precision = estimate_graph(artifact, model, inputs, Path(tmp))
        # what the backend already read from ONNX Runtime's graph of an int8 artifact, not asked again
        known = (artifact.details or {}).get("kernels", {}).get("behind_dequantize")
        estimate = estimate_latency(graph, baseline, list(shapes), profile, precision,
                                    None if known is None else frozenset(known))
        memory = peak_memory_of(graph, list(shapes), precision)
    mine, dense = estimate.get("estimated_ms"), estimate.get("baseline_estimated_ms")
    if artifact.latency is not None:  # the backend timed it on its own runtime
        latency = artifact.latency
    elif timing.agent is not None:
        latency = _decisively(timing, lambda: measure_on_agent(timing, artifact, baseline, same_as_baseline, inputs))
    elif reason is None:
        latency = _decisively(timing, lambda: measure_here(timing, artifact, baseline, same_as_baseline, inputs, here))
    elif mine is not None:  # no device: the estimate stands in, labelled, with how far its device's speed swung
        spread, swung = estimate_swing(profile, estimate["estimate"].get("kernels"), mine)
        return Latency(
            ESTIMATED, f"{profile.name}: {profile.description}", median_ms=mine, p90_ms=mine,
            baseline_median_ms=dense, baseline_p90_ms=dense, spread=spread,
            speedup=round(dense / mine, 4) if mine > 0 else None, inputs=shapes, **estimate,
            note=f"estimated from profile {profile.name}, not measured: {reason}; {swung}"
                 "measure on the device with --device http://HOST:PORT (edgeprune agent serve)"), memory
    else:
        return Latency(UNAVAILABLE, profile.name, inputs=shapes, **estimate,
                       note=f"not measured: {reason}; attach the device with --device"), memory
    error = round(mine / latency.median_ms - 1, 4) if latency.source == MEASURED and mine else None
    return replace(latency, inputs=shapes, **estimate, estimate_error=error), memory


def estimate_graph(artifact: Artifact, model: torch.nn.Module, inputs: Sequence[torch.Tensor],
                   tmp: Path) -> tuple[Path, str | None]:
    """Returns the ONNX graph to estimate the artifact from, and the precision to re-type it to.

    An ONNX artifact is its own graph. A TensorRT or Core ML artifact is estimated from its
    ONNX graph (or the pruned model exported here) at the artifact's precision.
    """
    candidates = [artifact.measure_path, artifact.path, *artifact.files]
    onnx_file = next((p for p in candidates if p is not None and Path(p).suffix == ".onnx" and Path(p).is_file()), None)
    precision = None if artifact.format == "onnx" else artifact.precision
    if onnx_file is None:
        onnx_file = export_onnx(model, tuple(inputs), tmp / "pruned.onnx")
    return Path(onnx_file), precision


def baseline_precision(profile: Profile) -> str:
    """Returns the precision the dense baseline runs at on a device: fp32, or its widest."""
    for p in ("fp32", "fp16", "int8"):
        if p in profile.precisions:
            return p
    return "fp32"


def estimate_latency(graph: Path, baseline: Path, shapes: list[tuple[int, ...]], profile: Profile,
                     precision: str | None, unfused: frozenset[str] | None = None) -> dict:
    """Returns the Latency fields of the estimate: estimated_ms of the artifact and of its dense baseline.

    ``unfused``: the nodes ONNX Runtime runs in float behind a DequantizeLinear, where already known
    (None: asked of ONNX Runtime here for an ONNX artifact).
    """
    from edgeprune.measure.estimate import estimate_onnx
    from edgeprune.measure.graph import ONNXRUNTIME

    try:
        # An ONNX artifact runs on ONNX Runtime: grouped as it fuses, what it leaves unfused charged as it runs.
        runtime = ONNXRUNTIME if precision is None else None
        if not runtime:
            unfused = frozenset()  # another runtime's artifact: ONNX Runtime's fusions say nothing of it
        elif unfused is None:
            unfused = unfused_nodes(graph)
        mine = estimate_onnx(graph, shapes, profile, precision, unfused, runtime)
        base_precision = baseline_precision(profile)
        base = estimate_onnx(baseline, shapes, profile, None if base_precision == "fp32" else base_precision,
                             runtime=runtime)
    except Exception as exc:  # an operator the estimator cannot follow must not fail the build
        return {"estimated_ms": None, "estimate": {"note": f"no estimate: {type(exc).__name__}: {exc}"[:300]}}
    if mine.unsized_layers:  # a lower bound only: a budget it "meets" would be a false pass
        shown = ", ".join(mine.unsized_layers[:3]) + (" ..." if len(mine.unsized_layers) > 3 else "")
        return {"estimated_ms": None, "estimate": {
            **mine.summary(), "note": f"no estimate: the sizes of {len(mine.unsized_layers)} layer(s) stayed unknown "
                                      f"({shown}), so their arithmetic would not be counted"}}
    return {
        "estimated_ms": round(mine.ms, 4),
        "baseline_estimated_ms": round(base.ms, 4),
        "estimate": {**mine.summary(), "baseline_precision": base_precision},
    }


def peak_memory_of(graph: Path, shapes: list[tuple[int, ...]], precision: str | None) -> Memory:
    """Returns the peak weights + activations of one inference, estimated from the graph."""
    from edgeprune.measure.memory import peak_memory

    try:
        return peak_memory(graph, shapes, precision).memory()
    except Exception as exc:  # the memory budget then fails as "not determined"
        return Memory(UNAVAILABLE, note=f"no memory estimate: {type(exc).__name__}: {exc}"[:300])


def measure_here(timing: Timing, artifact: Artifact, baseline: Path, same_as_baseline: bool,
                 inputs: Sequence[torch.Tensor], here: StandIn) -> Latency:
    """Returns the latency measured on this machine (side by side with the dense baseline when final).

    The latency says what it was measured on and why that stands for the profile's device.
    """
    files = {"artifact": artifact.measure_path}
    if timing.final and not same_as_baseline:
        files["baseline"] = baseline
    with machine_lock():  # two workers of a run (or two builds) on one machine must not time each other
        start = time.perf_counter()
        stats = measure_onnx_files(files, inputs, here.threads, None if timing.final else SEARCH_PROTOCOL)
        seconds = time.perf_counter() - start
    where = {"host": here.host, "stands_in": here.reason, "threads": here.threads,
             **({"measure_here": True, "differs": here.differs} if here.measure_here else {})}
    return Latency.measured(stats["artifact"], local_device(here.host), "onnxruntime " + _ort_version(),
                            stats.get("baseline", stats["artifact"]) if timing.final else None,
                            "baseline" in stats, batch=int(inputs[0].shape[0]), seconds=round(seconds, 2), **where)


def _decisively(timing: Timing, measure: Callable[[], Latency]) -> Latency:
    """Returns ``measure()``'s latency, measured once more if it cannot decide the budget.

    One noisy round sets the spread, and a budget inside the spread is undecided (a failed
    budget). Other load only ever slows runs down, so of two measurements the quieter is the
    truer one; both spreads go into the report. A search's quick timing is taken once.
    """
    first = measure()
    return remeasure_if_undecided(first, measure, timing.budgets) if timing.final else first


def remeasure_if_undecided(first: Latency, measure: Callable[[], Latency], budgets: Budgets) -> Latency:
    """Returns ``first``, or the quieter of it and a second ``measure()`` when ``first`` cannot decide the budget."""
    if not latency_undecided(first, budgets):
        return first
    second = measure()
    spreads = [float(m.spread or 0.0) for m in (first, second)]
    remeasured = {"first_spread": spreads[0], "second_spread": spreads[1]}
    noise = list(spreads)
    if budgets.latency_ratio is not None:  # a ratio is judged with the dense model's spread as well
        dense = [float(m.baseline_spread or 0.0) for m in (first, second)]
        remeasured.update(first_baseline_spread=dense[0], second_baseline_spread=dense[1])
        noise = [mine + base for mine, base in zip(spreads, dense, strict=True)]
    kept = second if noise[1] < noise[0] else first
    return replace(kept, remeasured=remeasured)


def measure_on_agent(timing: Timing, artifact: Artifact, baseline: Path, same_as_baseline: bool,
                     inputs: Sequence[torch.Tensor]) -> Latency:
    """Returns the latency measured on the remote device (side by side with the dense baseline when final)."""
    upload = get_backend(artifact.format, artifact.task).upload(artifact)
    models = [upload]
    if timing.final and not same_as_baseline:
        runtime = "tensorrt" if upload.runtime == "tensorrt" else "onnxruntime"
        models.append(UploadModel("baseline", "onnx", baseline, runtime, "fp32"))
    reply = timing.agent.measure(models, [t.detach().cpu().numpy() for t in inputs], timing.threads)
    mine = reply["results"]["artifact"]
    base = reply["results"].get("baseline", mine) if timing.final else None
    return Latency.measured(LatencyStats.from_dict(mine), reply["device"], mine.get("runtime"),
                            LatencyStats.from_dict(base) if base is not None else None, base is not mine,
                            agent=reply["agent"], threads=reply.get("threads"), batch=int(inputs[0].shape[0]),
                            seconds=reply.get("seconds"),
                            baseline_runtime=base.get("runtime") if base is not None else None)


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__
