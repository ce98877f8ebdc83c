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
from edgeprune.gate import Budgets, check_budgets
from edgeprune.measure.local import host_mismatch, local_device, measure_onnx_files
from edgeprune.output import check_output_folder, staged_output
from edgeprune.plan import Plan, make_plan
from edgeprune.profile import Profile, load_profile
from edgeprune.report import write_report
from edgeprune.stats import model_stats
from edgeprune.verify import Verification, verify_numeric
from edgeprune.workload import Workload, load_workload

VERIFY_BATCHES = 4


@dataclass(frozen=True)
class BuildOptions:
    """Everything ``edgeprune build`` takes; each field is a CLI flag and a target-file key."""

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
    backend = get_backend(plan.format)
    request = LowerRequest(precision=plan.precision, profile=profile,
                           calibration=workload.calibration_batches(), sparsity=plan.kind,
                           nm=plan.nm or (2, 4), palettize=options.palettize)
    backend.check(request)
    if options.device:
        raise UnsupportedError("--device (measuring through a remote agent) is not available yet")
    preflight = getattr(backend, "preflight", None)
    if preflight is not None and plan.kind != "none":  # an unlowerable operator fails before pruning runs
        with step(f"check {plan.format} can lower every operator"):
            preflight(workload.model, tuple(workload.example_inputs), request)

    dense = workload.model
    search_section = None
    recover_steps = options.recover
    if plan.search is not None:
        plan, recover_steps, search_section = _search(workload, profile, plan, options, step)
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
        report["notes"] += artifact.notes
        with step("measure latency"):
            report["latency"] = _latency(workload, profile, plan, artifact, dense, options, model is dense)
        with step("evaluate accuracy on the artifact"):
            report["accuracy"] = _with_recovery(_accuracy(workload, predict, backend, artifact), prune_details)
        report["budgets"] = check_budgets(report, options.budgets)
        report["passed"] = verification.passed and all(b["met"] for b in report["budgets"])
        if not verification.passed:
            report["notes"].append(f"verification failed: {verification.detail}")
        write_report(report, stage)
    return report


def _strategy_section(plan: Plan, prune_details: dict, pruned: bool) -> dict:
    """Returns the report's strategy: what was applied ('none' if nothing was pruned) and why."""
    section = plan.strategy_section()
    section["details"] = {**plan.details, **prune_details}
    if not pruned and plan.kind != "none":
        section["details"]["device_strategy"] = plan.kind
        section["kind"] = "none"
    return section


def _search(workload: Workload, profile: Profile, plan: Plan, options: BuildOptions,
            step: Callable) -> tuple[Plan, int, dict]:
    """Returns the plan of the least-pruned candidate meeting the budgets (or the nearest one)."""
    from edgeprune.candidates import CandidateEvaluator
    from edgeprune.search import search

    with (step(f"search {plan.kind} sparsity in [{plan.search[0]:g}, {plan.search[1]:g}] for the budgets"),
          CandidateEvaluator(workload, profile, plan, options.budgets, options.criterion, options.threads) as evaluator):
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
    from edgeprune.prune import config_for, prune_, recover

    nm = f"{plan.nm[0]}:{plan.nm[1]}" if plan.nm else None
    config = config_for(plan.kind, None if plan.kind == "nm" else plan.sparsity, plan.criterion, nm, profile)
    result = prune_(workload.model, config, workload.calibration, workload.example_inputs)
    details = dict(result.details)
    if plan.kind in ("structured", "hybrid") and workload.calibration:
        from edgeprune.prune.batchnorm import recalibrate_batchnorm

        details["batchnorm_recalibrated"] = recalibrate_batchnorm(result.model, workload.calibration_batches())
    if recover_steps:
        if not workload.finetune_data:
            raise InputError("--recover needs Workload(finetune_data=...): the workload gives none")
        before = _evaluate_torch(workload, result.model)
        info = dict(recover(result.model, workload.model, workload.finetune_data, recover_steps, masks=result.masks))
        info.update({"steps": recover_steps, "metric_before": before, "metric_after": _evaluate_torch(workload, result.model)})
        details["recovery"] = info
    return result.model, details


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


def _latency(workload: Workload, profile: Profile, plan: Plan, artifact: Artifact,
             dense: torch.nn.Module, options: BuildOptions, model_is_dense: bool) -> dict:
    """Returns the latency section: measured here when this machine is the device."""
    if artifact.latency is not None:  # the backend timed the artifact on its own runtime (an engine on this GPU)
        return artifact.latency
    reason = host_mismatch(profile)
    if reason is None and artifact.measure_path is None:
        reason = f"{artifact.format} artifacts cannot run on this machine"
    if reason is not None:
        return {"source": "unavailable", "device": profile.name,
                "note": f"not measured: {reason}; attach the device with --device"}
    files = {"artifact": artifact.measure_path}
    same_as_baseline = model_is_dense and plan.precision == "fp32" and artifact.format == "onnx"
    with tempfile.TemporaryDirectory(prefix="edgeprune-baseline-") as tmp:
        if not same_as_baseline:
            files["baseline"] = export_onnx(dense, tuple(workload.example_inputs), Path(tmp) / "dense.onnx")
        start = time.perf_counter()
        stats = measure_onnx_files(files, workload.example_inputs, options.threads)
        seconds = time.perf_counter() - start
    mine = stats["artifact"]
    base = stats.get("baseline", mine)
    return {
        "source": "measured",
        "device": local_device(),
        "runtime": "onnxruntime " + _ort_version(),
        "threads": options.threads or _threads(),
        "batch": int(workload.example_inputs[0].shape[0]),
        **{k: round(v, 4) if isinstance(v, float) else v for k, v in mine.to_dict().items()},
        "baseline_median_ms": round(base.median_ms, 4),
        "speedup": round(base.median_ms / mine.median_ms, 4),
        "seconds": round(seconds, 2),
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


def _threads() -> int:
    from edgeprune.host import this_host

    return this_host().cores


def copy_model(model: torch.nn.Module) -> torch.nn.Module:
    """Returns a deep copy of a model, so pruning never touches the dense baseline."""
    return copy.deepcopy(model)
