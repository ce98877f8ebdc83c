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
from dataclasses import dataclass
from pathlib import Path

import torch

from edgeprune.backends import Artifact, get_backend
from edgeprune.backends.onnx_tools.export import export_onnx
from edgeprune.gate import Budgets, latency_undecided
from edgeprune.host import Host
from edgeprune.measure.agent_client import AgentClient
from edgeprune.measure.agent_wire import UploadModel
from edgeprune.measure.local import StandIn, local_device, measure_onnx_files, stand_in
from edgeprune.measure.protocol import Protocol
from edgeprune.profile import Profile

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
    agent: AgentClient | None = None
    final: bool = True

    def stand_in(self, precision: str) -> StandIn:
        return stand_in(self.profile, precision, self.host, self.measure_here, self.threads)


def latency_of(timing: Timing, artifact: Artifact, model: torch.nn.Module, inputs: Sequence[torch.Tensor],
               baseline: Path, same_as_baseline: bool) -> tuple[dict, dict]:
    """Returns the latency and memory sections for an artifact of ``model``.

    ``baseline`` is the dense model's ONNX graph (the speed-up is against it); it is the
    artifact itself when ``same_as_baseline``. Latency is the backend's own timing when it has
    one (an engine on this GPU), else measured on the agent, else measured here when this
    machine stands in for the profile's device (``--measure-here`` says it does), else estimated.
    """
    profile = timing.profile
    shapes = [tuple(int(d) for d in t.shape) for t in inputs]
    here = timing.stand_in(artifact.precision)
    reason = None if here.here else here.reason
    if reason is None and artifact.measure_path is None:
        reason = f"{artifact.format} artifacts cannot run on this machine"
    with tempfile.TemporaryDirectory(prefix="edgeprune-latency-") as tmp:
        graph, precision = estimate_graph(artifact, model, inputs, Path(tmp))
        estimate = estimate_latency(graph, baseline, shapes, profile, precision)
        memory = peak_memory_section(graph, shapes, precision)
    if artifact.latency is not None:  # the backend timed it on its own runtime
        section = dict(artifact.latency)
    elif timing.agent is not None:
        section = _decisively(timing, lambda: measure_on_agent(timing, artifact, baseline, same_as_baseline, inputs))
    elif reason is None:
        section = _decisively(timing, lambda: measure_here(timing, artifact, baseline, same_as_baseline, inputs, here))
    elif estimate.get("estimated_ms") is not None:  # no device: the estimate stands in, labelled
        section = {
            "source": "estimated",
            "device": f"{profile.name}: {profile.description}",
            "median_ms": estimate["estimated_ms"],
            "p90_ms": estimate["estimated_ms"],
            "baseline_median_ms": estimate["baseline_estimated_ms"],
            "baseline_p90_ms": estimate["baseline_estimated_ms"],
            "speedup": round(estimate["baseline_estimated_ms"] / estimate["estimated_ms"], 4)
            if estimate["estimated_ms"] > 0 else None,
            "note": f"estimated from profile {profile.name}, not measured: {reason}; "
                    "measure on the device with --device http://HOST:PORT (edgeprune agent serve)",
        }
    else:
        return {"source": "unavailable", "device": profile.name, "inputs": [list(s) for s in shapes], **estimate,
                "note": f"not measured: {reason}; attach the device with --device"}, memory
    section["inputs"] = [list(s) for s in shapes]
    section.update(estimate)
    if section["source"] == "measured" and estimate.get("estimated_ms"):
        section["estimate_error"] = round(estimate["estimated_ms"] / section["median_ms"] - 1, 4)
    return section, memory


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
                     precision: str | None) -> dict:
    """Returns estimated_ms for the artifact and its dense baseline on the profile, with details."""
    from edgeprune.measure.estimate import estimate_onnx

    try:
        mine = estimate_onnx(graph, shapes, profile, precision)
        base_precision = baseline_precision(profile)
        base = estimate_onnx(baseline, shapes, profile, None if base_precision == "fp32" else base_precision)
    except Exception as exc:  # an operator the estimator cannot follow must not fail the build
        return {"estimated_ms": None, "estimate": {"note": f"no estimate: {type(exc).__name__}: {exc}"[:300]}}
    return {
        "estimated_ms": round(mine.ms, 4),
        "baseline_estimated_ms": round(base.ms, 4),
        "estimate": {**mine.summary(), "baseline_precision": base_precision},
    }


def peak_memory_section(graph: Path, shapes: list[tuple[int, ...]], precision: str | None) -> dict:
    """Returns the report's memory section: peak weights + activations of one inference."""
    from edgeprune.measure.memory import peak_memory

    try:
        return peak_memory(graph, shapes, precision).to_dict()
    except Exception as exc:  # the memory budget then fails as "not determined"
        return {"source": "unavailable", "note": f"no memory estimate: {type(exc).__name__}: {exc}"[:300]}


def measure_here(timing: Timing, artifact: Artifact, baseline: Path, same_as_baseline: bool,
                 inputs: Sequence[torch.Tensor], here: StandIn) -> dict:
    """Returns the latency measured on this machine (side by side with the dense baseline when final).

    The section says what it was measured on and why that stands for the profile's device.
    """
    files = {"artifact": artifact.measure_path}
    if timing.final and not same_as_baseline:
        files["baseline"] = baseline
    start = time.perf_counter()
    stats = measure_onnx_files(files, inputs, here.threads, None if timing.final else SEARCH_PROTOCOL)
    seconds = time.perf_counter() - start
    mine = stats["artifact"]
    section = {
        "source": "measured",
        "device": local_device(here.host),
        "runtime": "onnxruntime " + _ort_version(),
        **here.to_dict(),
        "batch": int(inputs[0].shape[0]),
        **_rounded(mine.to_dict()),
        "seconds": round(seconds, 2),
    }
    if timing.final:
        base = stats.get("baseline", mine)
        section.update({"baseline_median_ms": round(base.median_ms, 4), "baseline_p90_ms": round(base.p90_ms, 4),
                        "baseline_spread": round(base.spread, 4) if "baseline" in stats else 0.0,
                        "speedup": round(base.median_ms / mine.median_ms, 4),
                        "baseline": _rounded(base.to_dict())})
    return section


def _decisively(timing: Timing, measure: Callable[[], dict]) -> dict:
    """Returns ``measure()``'s latency section, measured once more if it cannot decide the budget.

    One noisy round sets the spread, and a budget inside the spread is undecided (a failed
    budget). Other load only ever slows runs down, so of two measurements the quieter is the
    truer one; both spreads go into the report. A search's quick timing is taken once.
    """
    first = measure()
    return remeasure_if_undecided(first, measure, timing.budgets) if timing.final else first


def remeasure_if_undecided(first: dict, measure: Callable[[], dict], budgets: Budgets) -> dict:
    """Returns ``first``, or the quieter of it and a second ``measure()`` when ``first`` cannot decide the budget."""
    if not latency_undecided(first, budgets):
        return first
    second = measure()
    spreads = [float(m.get("spread") or 0.0) for m in (first, second)]
    kept = second if spreads[1] < spreads[0] else first
    return {**kept, "remeasured": {"first_spread": spreads[0], "second_spread": spreads[1]}}


def measure_on_agent(timing: Timing, artifact: Artifact, baseline: Path, same_as_baseline: bool,
                     inputs: Sequence[torch.Tensor]) -> dict:
    """Returns the latency measured on the remote device (side by side with the dense baseline when final)."""
    upload = get_backend(artifact.format).upload(artifact)
    models = [upload]
    if timing.final and not same_as_baseline:
        runtime = "tensorrt" if upload.runtime == "tensorrt" else "onnxruntime"
        models.append(UploadModel("baseline", "onnx", baseline, runtime, "fp32"))
    reply = timing.agent.measure(models, [t.detach().cpu().numpy() for t in inputs], timing.threads)
    mine = reply["results"]["artifact"]
    stats = _rounded({k: v for k, v in mine.items() if k != "runtime"})
    section = {
        "source": "measured",
        "device": reply["device"],
        "agent": reply["agent"],
        "runtime": mine.get("runtime"),
        "threads": reply.get("threads"),
        "batch": int(inputs[0].shape[0]),
        **stats,
        "seconds": reply.get("seconds"),
    }
    if timing.final:
        base = reply["results"].get("baseline", mine)
        section.update({"baseline_median_ms": round(float(base["median_ms"]), 4),
                        "baseline_p90_ms": round(float(base.get("p90_ms", base["median_ms"])), 4),
                        "baseline_spread": round(float(base.get("spread") or 0.0), 4) if base is not mine else 0.0,
                        "baseline_runtime": base.get("runtime"),
                        "speedup": round(float(base["median_ms"]) / float(mine["median_ms"]), 4),
                        "baseline": _rounded({k: v for k, v in base.items() if k != "runtime"})})
    return section


def _rounded(stats: dict) -> dict:
    """Returns latency statistics with their times rounded to 0.1 µs, as the report keeps them."""
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in stats.items()}


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__
