"""The build: workload -> plan -> prune -> lower -> verify -> measure -> gate -> report."""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from edgeprune import __version__
from edgeprune.backends import Artifact, LowerRequest, get_backend
from edgeprune.backends.onnx_export import export_onnx
from edgeprune.errors import InputError, UnsupportedError
from edgeprune.gate import Budgets, check_budgets, check_latency
from edgeprune.host import Host
from edgeprune.measure.agent_client import AgentClient, UploadModel, upload_format
from edgeprune.measure.local import (
    StandIn,
    check_measure_flags,
    local_device,
    measure_onnx_files,
    stand_in,
)
from edgeprune.output import check_output_folder, staged_output
from edgeprune.plan import Plan, make_plan
from edgeprune.profile import Profile, load_profile
from edgeprune.report import write_report
from edgeprune.stats import model_stats
from edgeprune.verify import Verification, verify_numeric
from edgeprune.workload import Workload, is_hf_causal_lm_workload, load_workload

VERIFY_BATCHES = 4


@dataclass(frozen=True)
class BuildOptions:
    """Everything ``edgeprune build`` takes; each field but ``host`` is a CLI flag and a target-file key.

    ``host`` is the machine the build runs on (None: this one); the Python API and tests
    pass another to ask what a build would decide there.
    """

    model: str
    profile: str
    output: Path
    strategy: str = "auto"
    sparsity: float | None = None
    criterion: str | None = None
    nm: str = "2:4"
    recover: int = 0
    quantize: str = "auto"
    format: str = "auto"
    device: str | None = None
    budgets: Budgets = field(default_factory=Budgets)
    threads: int | None = None
    palettize: int | None = None
    measure_here: bool = False
    host: Host | None = None


Step = Callable[[str], "contextmanager"]


@contextmanager
def _silent_step(name: str) -> Iterator[None]:
    yield


def build(options: BuildOptions, step: Callable = _silent_step) -> dict:
    """Returns the report of a build; the artifact and report are in ``options.output``.

    ``step(name)`` is a context manager wrapped around each stage (the CLI shows progress
    with it). Bad input raises InputError before anything is written.
    """
    check_output_folder(Path(options.output))
    with step("load workload and profile"):
        workload = load_workload(options.model)
        profile = load_profile(options.profile)
    plan = make_plan(workload, profile, options.strategy, options.sparsity, options.quantize,
                     options.format, options.criterion, options.nm, options.budgets)
    if is_hf_causal_lm_workload(workload):
        _check_causal_lm_plan(plan)
    backend = get_backend(plan.format)
    request = _lower_request(plan, profile, workload, options)
    backend.check(request)
    check_measure_flags(profile, options.measure_here, options.threads)  # before any work
    # Reach the device before the long stages, so a wrong token or URL fails in a second.
    agent = _connect_agent(options.device) if options.device else None
    preflight = getattr(backend, "preflight", None)
    if preflight is not None and plan.kind != "none":  # an unlowerable operator fails before pruning runs
        with step(f"check {plan.format} can lower every operator"):
            preflight(workload.model, tuple(workload.example_inputs), request)

    dense = workload.model
    search_section = None
    recover_steps = options.recover
    if plan.search is not None:
        plan, recover_steps, search_section = _search(workload, profile, plan, options, step, agent)
        request = _lower_request(plan, profile, workload, options)  # the search may have chosen a precision
        backend.check(request)
    with step("count parameters and MACs"):
        before = model_stats(dense, workload.example_inputs)
    with step(f"prune ({plan.kind})"):
        model, prune_details = _prune(workload, plan, profile, recover_steps)
        after = model_stats(model, workload.example_inputs)

    report: dict = {
        "schema": 1,
        "edgeprune_version": __version__,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "workload": workload.name,
        "profile": profile.name,
        "strategy": _strategy_section(plan, prune_details, pruned=model is not dense),
        "model": {
            "params_before": before["params"], "params_after": after["params"],
            "nonzero_params_after": after["nonzero_params"],
            "macs_before": before["macs"], "macs_after": after["macs"],
        },
        "notes": [],
    }
    if search_section is not None:
        report["search"] = search_section
    final = Path(options.output)
    with staged_output(final) as stage:
        with step(f"lower to {plan.format} ({plan.precision})"):
            artifact = backend.lower(model, tuple(workload.example_inputs), request, stage)
        with step("verify the artifact against PyTorch"):
            predict = backend.predictor(artifact)
            verification = _verify(model, predict, workload, plan, backend, artifact, request)
        report["artifact"] = _artifact_section(artifact, final, stage, verification)
        if is_hf_causal_lm_workload(workload):
            with step("save the pruned model as a Hugging Face directory"):
                report["artifact"]["hf_model"] = _save_causal_lm(model, workload, stage, final)
        report["notes"] += artifact.notes
        here = stand_in(profile, plan.precision, options.host, options.measure_here, options.threads)
        with step("measure latency" if agent or (here.here and artifact.measure_path) else "estimate latency"):
            report["latency"], report["memory"] = _latency(workload, profile, plan, artifact, dense, model,
                                                           options, agent, here)
        with step("evaluate accuracy on the artifact"):
            report["accuracy"] = _with_recovery(_accuracy(workload, predict, backend, artifact), prune_details)
        report["budgets"] = check_budgets(report, options.budgets)
        report["passed"] = verification.passed and all(b["met"] for b in report["budgets"])
        if not verification.passed:
            report["notes"].append(f"verification failed: {verification.detail}")
        write_report(report, stage)
    return report


def _lower_request(plan: Plan, profile: Profile, workload: Workload, options: BuildOptions) -> LowerRequest:
    return LowerRequest(precision=plan.precision, profile=profile, calibration=workload.calibration_batches(),
                        sparsity=plan.kind, nm=plan.nm or (2, 4), palettize=options.palettize)


def _strategy_section(plan: Plan, prune_details: dict, pruned: bool) -> dict:
    """Returns the report's strategy: what was applied ('none' if nothing was pruned) and why."""
    section = plan.strategy_section()
    section["details"] = {**plan.details, **prune_details}
    if not pruned and plan.kind != "none":
        section["details"]["device_strategy"] = plan.kind
        section["kind"] = "none"
    return section


def _search(workload: Workload, profile: Profile, plan: Plan, options: BuildOptions,
            step: Callable, agent: AgentClient | None = None) -> tuple[Plan, int, dict]:
    """Returns the plan of the least-pruned candidate meeting the budgets (or the nearest one)."""
    from edgeprune.candidates import CandidateEvaluator
    from edgeprune.search import search

    with (step(f"search {plan.kind} sparsity in [{plan.search[0]:g}, {plan.search[1]:g}] for the budgets"),
          CandidateEvaluator(workload, profile, plan, options.budgets, options.criterion, options.threads,
                             agent=agent, host=options.host, measure_here=options.measure_here) as evaluator):
        result = search(evaluator, options.recover or None)
    best = result.chosen or (result.nearest(1) or [None])[0]
    section = result.to_dict()
    if best is None:
        raise UnsupportedError("the search found no candidate that builds: " + "; ".join(
            o.error or "" for o in result.tried)[:300])
    chosen = evaluator.plan_for(best.candidate)
    how = (f"search chose {best.candidate.label}: the least pruning that meets every budget"
           if result.chosen else
           f"no candidate meets every budget; building the nearest, {best.candidate.label} "
           f"(misses {', '.join(best.misses)})")
    if best.recovered_steps:
        how += f", after {best.recovered_steps} recovery steps"
    chosen = dataclasses.replace(chosen, reasons=(*plan.reasons, how))
    return chosen, best.recovered_steps, section


def _prune(workload: Workload, plan: Plan, profile: Profile, recover_steps: int = 0) -> tuple[torch.nn.Module, dict]:
    """Returns the pruned model (a copy; the dense model stays the baseline) and its details."""
    if plan.kind == "none" or (plan.sparsity == 0.0 and plan.kind != "nm"):
        return workload.model, {}
    if recover_steps and not workload.finetune_data:
        raise InputError("--recover needs Workload(finetune_data=...): the workload gives none")
    if is_hf_causal_lm_workload(workload):
        model, details, masks = _prune_causal_lm(workload, plan, profile)
    else:
        model, details, masks = _prune_general(workload, plan, profile)
    if recover_steps:
        from edgeprune.prune import recover

        before = _evaluate_torch(workload, model)
        info = dict(recover(model, workload.model, workload.finetune_data, recover_steps, masks=masks))
        info.update({"steps": recover_steps, "metric_before": before, "metric_after": _evaluate_torch(workload, model)})
        details["recovery"] = info
    return model, details


def _prune_general(workload: Workload, plan: Plan, profile: Profile) -> tuple[torch.nn.Module, dict, dict | None]:
    """Returns a CNN or transformer pruned by edgeprune.prune, its details and its masks."""
    from edgeprune.prune import config_for, prune_
    from edgeprune.prune.recover import recalibrate_batchnorm

    nm = f"{plan.nm[0]}:{plan.nm[1]}" if plan.nm else None
    config = config_for(plan.kind, None if plan.kind == "nm" else plan.sparsity, plan.criterion, nm, profile)
    result = prune_(workload.model, config, workload.calibration, workload.example_inputs)
    details = dict(result.details)
    if plan.kind in ("structured", "hybrid") and workload.calibration:
        details["batchnorm_recalibrated"] = recalibrate_batchnorm(result.model, workload.calibration_batches())
    return result.model, details, result.masks


def _check_causal_lm_plan(plan: Plan) -> None:
    """Raises InputError for a strategy or criterion the causal-LM pruner does not take."""
    if plan.kind == "hybrid":
        raise InputError("causal LMs take --strategy unstructured, nm or structured (hybrid is for CNNs and "
                         "vision transformers)")
    if (plan.criterion or "wanda") not in ("magnitude", "wanda", "sparsegpt"):
        raise InputError(f"causal-LM pruning scores with magnitude, wanda or sparsegpt, got --criterion {plan.criterion}")
    if plan.kind == "structured" and plan.criterion == "sparsegpt":
        raise InputError("structured causal-LM pruning scores with magnitude or wanda (restoration is its weight update)")


def _prune_causal_lm(workload: Workload, plan: Plan, profile: Profile) -> tuple[torch.nn.Module, dict, dict | None]:
    """Returns a causal LM pruned block by block (edgeprune.llm), its details and its masks.

    Unstructured and N:M score with Wanda unless --criterion says otherwise (magnitude or
    sparsegpt); structured removes FFN neurons and whole key/value head groups, widths rounded
    to the profile's channel multiple, and restores the next projection by least squares.
    """
    from edgeprune.llm import prune_causal_lm

    _check_causal_lm_plan(plan)
    multiple = int(profile.channel_multiple.value) if plan.kind == "structured" else 1
    result = prune_causal_lm(workload.model, plan.kind, plan.sparsity, workload.calibration,
                             criterion=plan.criterion or "wanda", nm=plan.nm or (2, 4), multiple=multiple)
    # the zeros of unstructured and N:M sparsity stay zeros through recovery
    masks = ({name: p != 0 for name, p in result.model.named_parameters() if p.dim() == 2 and bool((p == 0).any())}
             if plan.kind in ("unstructured", "nm") else None)
    return result.model, dict(result.details), masks


def _save_causal_lm(model: torch.nn.Module, workload: Workload, stage: Path, final: Path) -> dict:
    """Returns the report entry of the pruned LM saved to ``hf/``, after reloading it to check.

    The directory holds the config with the pruned widths, safetensors weights and the
    tokenizer, so ``AutoModelForCausalLM.from_pretrained`` rebuilds the pruned model.
    """
    from edgeprune.llm import reload_max_abs_diff, save_pretrained

    folder = save_pretrained(model, stage / "hf", workload.extras.get("tokenizer"))
    diff = reload_max_abs_diff(model, folder, workload.example_inputs[0])
    if diff > 1e-4:
        raise UnsupportedError(f"the saved Hugging Face model does not reload to the pruned one (max logit "
                               f"difference {diff:.3g})")
    return {"path": str(final / "hf"), "reload_max_abs_diff": diff}


def _evaluate_torch(workload: Workload, model: torch.nn.Module) -> float | None:
    if workload.evaluate is None:
        return None
    with torch.no_grad():
        return float(workload.evaluate(_torch_predict(model)))


def _verify(model, predict, workload: Workload, plan: Plan, backend, artifact: Artifact,
            request: LowerRequest) -> Verification:
    if predict is None:
        check = getattr(backend, "verify_structure", None)
        if check is None:
            return Verification("structural", True, detail=backend.cannot_run_reason() or "")
        return check(artifact, model, request)
    # a handful of real batches decides "same function"; the full metric is computed separately
    return verify_numeric(model, predict, workload.calibration_batches()[:VERIFY_BATCHES],
                          artifact.tolerance or plan.precision,
                          classifier=workload.task == "classification", subject=artifact.evaluated_on)


def _artifact_section(artifact: Artifact, final: Path, stage: Path, verification: Verification) -> dict:
    def moved(p: Path) -> str:
        return str(final / p.relative_to(stage))

    return {
        "format": artifact.format,
        "precision": artifact.precision,
        "path": moved(artifact.path),
        "files": [moved(f) for f in artifact.files],
        "size_bytes": artifact.size_bytes,
        "verified": verification.to_dict(),
        **({"details": artifact.details} if artifact.details else {}),
    }


def _connect_agent(url: str) -> AgentClient:
    """Returns a client for the device agent at ``url`` after checking it answers to our token."""
    client = AgentClient(url)
    client.info()
    return client


def _latency(workload: Workload, profile: Profile, plan: Plan, artifact: Artifact, dense: torch.nn.Module,
             model: torch.nn.Module, options: BuildOptions, agent: AgentClient | None,
             here: StandIn) -> tuple[dict, dict]:
    """Returns the latency and memory sections of the report.

    Latency is measured on the device through its agent (``--device``), measured here when
    this machine stands in for the profile's device (same kernels, enough cores: ``here``)
    or the user says it does (``--measure-here``), and otherwise estimated from the profile
    with the roofline estimator. The estimate is always in ``estimated_ms``, so its error
    shows wherever a measurement exists.
    """
    shapes = [tuple(int(d) for d in t.shape) for t in workload.example_inputs]
    reason = None if here.here else here.reason
    if reason is None and artifact.measure_path is None:
        reason = f"{artifact.format} artifacts cannot run on this machine"
    same_as_baseline = model is dense and plan.precision == "fp32" and artifact.format == "onnx"
    with tempfile.TemporaryDirectory(prefix="edgeprune-latency-") as tmp:
        graph, precision = _estimate_graph(artifact, model, workload, Path(tmp))
        baseline = graph if same_as_baseline else export_onnx(dense, tuple(workload.example_inputs),
                                                              Path(tmp) / "dense.onnx")
        estimate = _estimate(graph, baseline, shapes, profile, precision)
        memory = _memory(graph, shapes, precision)
        if artifact.latency is not None:  # the backend timed it on its own runtime (an engine on this GPU)
            section = dict(artifact.latency)
        elif agent is not None:
            section = _measure_decisively(lambda: _measure_on_agent(agent, artifact, baseline, same_as_baseline,
                                                                    workload, options), options.budgets)
        elif reason is None:
            section = _measure_decisively(lambda: _measure_here(artifact, baseline, same_as_baseline, workload,
                                                                here), options.budgets)
        elif estimate.get("estimated_ms") is not None:  # no device: the estimate stands in, labelled
            section = {
                "source": "estimated",
                "device": f"{profile.name}: {profile.description}",
                "median_ms": estimate["estimated_ms"],
                "p90_ms": estimate["estimated_ms"],
                "baseline_median_ms": estimate["baseline_estimated_ms"],
                "speedup": round(estimate["baseline_estimated_ms"] / estimate["estimated_ms"], 4)
                if estimate["estimated_ms"] > 0 else None,
                "note": f"estimated from profile {profile.name}, not measured: {reason}; "
                        "measure on the device with --device http://HOST:PORT (edgeprune agent serve)",
            }
        else:
            return {"source": "unavailable", "device": profile.name, "inputs": shapes, **estimate,
                    "note": f"not measured: {reason}; attach the device with --device"}, memory
    section["inputs"] = [list(s) for s in shapes]
    section.update(estimate)
    if section["source"] == "measured" and estimate.get("estimated_ms"):
        section["estimate_error"] = round(estimate["estimated_ms"] / section["median_ms"] - 1, 4)
    return section, memory


def _estimate_graph(artifact: Artifact, model: torch.nn.Module, workload: Workload, tmp: Path) -> tuple[Path, str | None]:
    """Returns the ONNX graph to estimate the artifact from, and the precision to re-type it to.

    An ONNX artifact is its own graph. A TensorRT or Core ML artifact is estimated from its
    ONNX graph (or the pruned model exported here) at the artifact's precision.
    """
    candidates = [artifact.measure_path, artifact.path, *artifact.files]
    onnx_file = next((p for p in candidates if p is not None and Path(p).suffix == ".onnx" and Path(p).is_file()), None)
    precision = None if artifact.format == "onnx" else artifact.precision
    if onnx_file is None:
        onnx_file = export_onnx(model, tuple(workload.example_inputs), tmp / "pruned.onnx")
    return Path(onnx_file), precision


def _baseline_precision(profile: Profile) -> str:
    """Returns the precision the dense baseline runs at on a device: fp32, or its widest."""
    for p in ("fp32", "fp16", "int8"):
        if p in profile.precisions:
            return p
    return "fp32"


def _estimate(graph: Path, baseline: Path, shapes: list[tuple[int, ...]], profile: Profile,
              precision: str | None) -> dict:
    """Returns estimated_ms for the artifact and its dense baseline on the profile, with details."""
    from edgeprune.measure.estimate import estimate_onnx

    try:
        mine = estimate_onnx(graph, shapes, profile, precision)
        base_precision = _baseline_precision(profile)
        base = estimate_onnx(baseline, shapes, profile, None if base_precision == "fp32" else base_precision)
    except Exception as exc:  # an operator the estimator cannot follow must not fail the build
        return {"estimated_ms": None, "estimate": {"note": f"no estimate: {type(exc).__name__}: {exc}"[:300]}}
    return {
        "estimated_ms": round(mine.ms, 4),
        "baseline_estimated_ms": round(base.ms, 4),
        "estimate": {**mine.summary(), "baseline_precision": base_precision},
    }


def _memory(graph: Path, shapes: list[tuple[int, ...]], precision: str | None) -> dict:
    """Returns the report's memory section: peak weights + activations of one inference."""
    from edgeprune.measure.memory import peak_memory

    try:
        return peak_memory(graph, shapes, precision).to_dict()
    except Exception as exc:  # the memory budget then fails as "not determined"
        return {"source": "unavailable", "note": f"no memory estimate: {type(exc).__name__}: {exc}"[:300]}


def _measure_here(artifact: Artifact, baseline: Path, same_as_baseline: bool, workload: Workload,
                  here: StandIn) -> dict:
    """Returns the latency measured on this machine, side by side with the dense baseline.

    The section says what it was measured on and why that stands for the profile's device.
    """
    files = {"artifact": artifact.measure_path}
    if not same_as_baseline:
        files["baseline"] = baseline
    start = time.perf_counter()
    stats = measure_onnx_files(files, workload.example_inputs, here.threads)
    seconds = time.perf_counter() - start
    mine = stats["artifact"]
    base = stats.get("baseline", mine)
    return {
        "source": "measured",
        "device": local_device(here.host),
        "runtime": "onnxruntime " + _ort_version(),
        **here.to_dict(),
        "batch": int(workload.example_inputs[0].shape[0]),
        **{k: round(v, 4) if isinstance(v, float) else v for k, v in mine.to_dict().items()},
        "baseline_median_ms": round(base.median_ms, 4),
        "speedup": round(base.median_ms / mine.median_ms, 4),
        "seconds": round(seconds, 2),
    }


def _measure_decisively(measure: Callable[[], dict], budgets: Budgets) -> dict:
    """Returns ``measure()``'s latency section, measured once more if it cannot decide the budget.

    One noisy round sets the spread, and a budget inside the spread is undecided (a failed
    budget). Other load only ever slows runs down, so of two measurements the quieter is the
    truer one; both spreads go into the report.
    """
    first = measure()
    if budgets.latency_ms is None or not check_latency(first, budgets).get("note", "").startswith("undecided"):
        return first
    second = measure()
    spreads = [float(m.get("spread") or 0.0) for m in (first, second)]
    kept = second if spreads[1] < spreads[0] else first
    return {**kept, "remeasured": {"first_spread": spreads[0], "second_spread": spreads[1]}}


def _device_upload(artifact: Artifact) -> UploadModel:
    """Returns what the device runs for an artifact: the file, its format and runtime."""
    path = Path(artifact.path)
    if artifact.format == "tensorrt":
        if path.suffix in (".engine", ".plan", ".trt"):
            return UploadModel("artifact", "engine", path, "tensorrt", artifact.precision)
        onnx_file = next((Path(p) for p in [path, artifact.measure_path, *artifact.files]
                          if p is not None and Path(p).suffix == ".onnx"), None)
        if onnx_file is None:
            raise UnsupportedError("the TensorRT artifact has neither an engine nor an ONNX file to send to the device")
        # The engine is built on the device: engines do not move between GPUs or versions.
        return UploadModel("artifact", "onnx", onnx_file, "tensorrt", artifact.precision)
    return UploadModel("artifact", upload_format(path), path, None, artifact.precision)


def _measure_on_agent(agent: AgentClient, artifact: Artifact, baseline: Path, same_as_baseline: bool,
                      workload: Workload, options: BuildOptions) -> dict:
    """Returns the latency measured on the remote device, side by side with the dense baseline."""
    upload = _device_upload(artifact)
    models = [upload]
    if not same_as_baseline:
        runtime = "tensorrt" if upload.runtime == "tensorrt" else "onnxruntime"
        models.append(UploadModel("baseline", "onnx", baseline, runtime, "fp32"))
    inputs = [t.detach().cpu().numpy() for t in workload.example_inputs]
    reply = agent.measure(models, inputs, options.threads)
    mine = reply["results"]["artifact"]
    base = reply["results"].get("baseline", mine)
    stats = {k: round(v, 4) if isinstance(v, float) else v for k, v in mine.items() if k != "runtime"}
    return {
        "source": "measured",
        "device": reply["device"],
        "agent": reply["agent"],
        "runtime": mine.get("runtime"),
        "threads": reply.get("threads"),
        "batch": int(workload.example_inputs[0].shape[0]),
        **stats,
        "baseline_median_ms": round(float(base["median_ms"]), 4),
        "baseline_runtime": base.get("runtime"),
        "speedup": round(float(base["median_ms"]) / float(mine["median_ms"]), 4),
        "seconds": reply.get("seconds"),
    }


def _accuracy(workload: Workload, predict, backend, artifact: Artifact) -> dict:
    if workload.evaluate is None:
        return {"metric": workload.metric, "note": "the workload has no evaluate()"}
    with torch.no_grad():
        baseline = float(workload.evaluate(_torch_predict(workload.model)))
    section = {"metric": workload.metric, "higher_is_better": workload.higher_is_better,
               "baseline": baseline}
    if predict is None:
        section["note"] = f"not evaluated on the artifact: {backend.cannot_run_reason()}"
        return section
    with torch.no_grad():
        value = float(workload.evaluate(predict))
    section.update({"pruned": value, "drop": round(workload.drop(baseline, value), 6),
                    "evaluated_on": artifact.evaluated_on})
    return section


def _with_recovery(accuracy: dict, details: dict) -> dict:
    """Returns the accuracy section with the metric before and after recovery, when there was one."""
    recovery = details.get("recovery")
    if recovery:
        accuracy = {**accuracy, "before_recovery": recovery.get("metric_before"),
                    "after_recovery": recovery.get("metric_after")}
    return accuracy


def _torch_predict(model: torch.nn.Module):
    model = model.eval()

    def predict(*inputs: torch.Tensor) -> torch.Tensor:
        out = model(*inputs)
        out = out[0] if isinstance(out, (tuple, list)) else out
        return getattr(out, "logits", out)

    return predict


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def copy_model(model: torch.nn.Module) -> torch.nn.Module:
    """Returns a deep copy of a model, so pruning never touches the dense baseline."""
    return copy.deepcopy(model)
