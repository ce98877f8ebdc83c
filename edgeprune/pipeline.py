"""The build: workload -> plan -> (search) -> prune -> lower -> verify -> measure -> gate -> report.

Each stage is a public function of its own module; this one only puts them in order.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable
from pathlib import Path

from edgeprune import __version__
from edgeprune.backends import Artifact
from edgeprune.errors import UnsupportedError
from edgeprune.farm.farm import connect_device
from edgeprune.gate import check_budgets, refuse_generation_budgets, refuse_unprovable
from edgeprune.measure.generation import GenerationSettings
from edgeprune.measurements import Accuracy
from edgeprune.output import claimed_output, staged_output
from edgeprune.planning import Plan, make_plan
from edgeprune.profile import load_profile
from edgeprune.report import ModelCounts, Report, write_report
from edgeprune.report.mlflow_run import log_build
from edgeprune.search import Context, Evaluation, choose_plan, evaluate
from edgeprune.search.evaluate import profile_layers, silent_step
from edgeprune.search.pruning import check_prunable
from edgeprune.specs import load_workload
from edgeprune.stats import model_stats
from edgeprune.target import BuildOptions, check_before_work
from edgeprune.workload import Workload, check_runs


def run_build(options: BuildOptions, step: Callable = silent_step, workload: Workload | None = None) -> Report:
    """Returns the report of a build; the artifact and report are in ``options.output``.

    ``step(name)`` is a context manager wrapped around each stage (the CLI shows progress
    with it). ``workload`` is used instead of loading ``options.model`` (the Python API
    passes one it holds). Bad input raises InputError before anything is written.
    """
    tracking = check_before_work(options)
    if options.ray and workload is not None:
        from edgeprune.search.spec import EvaluationSpec

        EvaluationSpec.of(workload, options.profile, None)  # a workload held as an object: refused in one line
    with step("load workload and profile"):
        profile = load_profile(options.profile)
        workload = workload or load_workload(options.model, options.data)
        check_runs(workload)
        refuse_generation_budgets(options.budgets, workload.is_causal_lm)
    plan = make_plan(workload, profile, options.strategy, options.sparsity, options.quantize, options.format,
                     options.criterion, options.nm, options.budgets, options.recover, options.palettize)
    check_prunable(plan, profile, workload)
    backend = plan.backend()
    backend.check(plan.lower_request(profile, workload.calibration_batches()))
    # Reach the device before the long stages, so a wrong token or URL fails in a second.
    agent = connect_device(options.device, options.farm, profile.name)
    generation = GenerationSettings(options.prompt_tokens, options.generate_tokens)
    with claimed_output(options.output), Context(workload, profile, options.budgets, options.host,
                                                  options.measure_here, options.threads, agent, generation) as ctx:
        preflight = getattr(backend, "preflight", None)
        if preflight is not None and plan.kind != "none":  # an unlowerable operator fails before pruning runs
            with step(f"check {plan.format} can lower every operator"):
                preflight(workload.model, tuple(workload.example_inputs), plan.lower_request(profile, ()))
        with step("score the dense model"):
            baseline = ctx.baseline_score()  # an evaluate() that fails or returns no number fails here, not after the work
            refuse_unprovable(options.budgets, workload.evaluate is not None, bool(baseline and baseline.slices))
        search = None
        if plan.search is not None:
            low, high = plan.search
            with step(f"search {plan.kind} sparsity in [{low:g}, {high:g}] for the budgets"):
                plan, search = search_plan(ctx, plan, options)
        with step("count parameters and MACs"):
            before = model_stats(workload.model, workload.example_inputs)
        final = Path(options.output)
        with staged_output(final) as stage:
            evaluation = evaluate(ctx, plan, stage, step=step)
            with step("profile layers with ONNX Runtime"):  # its own sessions, after the timing
                layers = profile_layers(ctx, evaluation)
            hf_model = None
            if workload.is_causal_lm:
                with step("save the pruned model as a Hugging Face directory"):
                    hf_model = save_causal_lm(evaluation, workload, stage, final)
            report = assemble_report(workload, profile.name, before, evaluation, ctx, stage, final, search, hf_model,
                                     layers)
            write_report(report, stage)
    if tracking is not None:
        with step(f"log the run to MLflow ({tracking})"):
            log_build(report.to_dict(), logged_options(options), final, tracking)
    return report


def logged_options(options: BuildOptions) -> dict:
    """Returns the options of a build as an MLflow run records them: those set, budgets apart (the report has them)."""
    skip = {"host", "budgets", "mlflow"}
    return {f.name: str(getattr(options, f.name)) for f in dataclasses.fields(options)
            if f.name not in skip and getattr(options, f.name) is not None}


def assemble_report(workload: Workload, profile: str, before: dict, evaluation: Evaluation, ctx: Context,
                    stage: Path, final: Path, search: dict | None, hf_model: dict | None,
                    layers: dict | None = None) -> Report:
    """Returns the build's report: the evaluation's figures, the budgets checked against them, the verdict."""
    verification = evaluation.verification
    budgets = check_budgets(evaluation.measurements(), ctx.budgets)
    notes = list(evaluation.artifact.notes)
    if not verification.passed:
        notes.append(f"verification failed: {verification.detail}")
    artifact = artifact_section(evaluation.artifact, final, stage)
    artifact["verified"] = verification.to_dict()
    if hf_model is not None:
        artifact["hf_model"] = hf_model
    after = evaluation.stats
    return Report(
        edgeprune_version=__version__,
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        workload=workload.name, profile=profile,
        strategy=strategy_section(evaluation.plan, evaluation.pruned.details,
                                  pruned=evaluation.pruned.model is not workload.model),
        model=ModelCounts(before["params"], after["params"], after["nonzero_params"], before["macs"], after["macs"]),
        artifact=artifact, latency=evaluation.latency, memory=evaluation.memory,
        accuracy=evaluation.accuracy or Accuracy(workload.metric, note="not scored"),
        budgets=budgets, passed=verification.passed and all(b.met for b in budgets), notes=notes, search=search,
        layers=layers, generation=evaluation.generation,
    )


def strategy_section(plan: Plan, prune_details: dict, pruned: bool) -> dict:
    """Returns the report's strategy: what was applied ('none' if nothing was pruned) and why."""
    section = plan.strategy_section()
    section["details"] = {**plan.details, **prune_details}
    if not pruned and plan.kind != "none":
        section["details"]["device_strategy"] = plan.kind
        section["kind"] = "none"
    return section


def artifact_section(artifact: Artifact, final: Path, stage: Path) -> dict:
    """Returns the report's artifact section, its paths where the build folder will be."""
    def moved(p: Path) -> str:
        return str(final / Path(p).relative_to(stage))

    return {
        "format": artifact.format,
        "precision": artifact.precision,
        "path": moved(artifact.path),
        "files": [moved(f) for f in artifact.files],
        "size_bytes": artifact.size_bytes,
        **({"details": artifact.details} if artifact.details else {}),
    }


def save_causal_lm(evaluation: Evaluation, workload: Workload, stage: Path, final: Path) -> dict:
    """Returns the report entry of the pruned LM saved to ``hf/``, after reloading it to check.

    The directory holds the config with the pruned widths, safetensors weights and the
    tokenizer, so ``AutoModelForCausalLM.from_pretrained`` rebuilds the pruned model.
    """
    from edgeprune.llm import reload_max_abs_diff, save_pretrained

    model = evaluation.pruned.model
    folder = save_pretrained(model, stage / "hf", workload.text.tokenizer if workload.text else None)
    diff = reload_max_abs_diff(model, folder, workload.example_inputs[0])
    if diff > 1e-4:
        raise UnsupportedError(f"the saved Hugging Face model does not reload to the pruned one (max logit "
                               f"difference {diff:.3g})")
    return {"path": str(final / "hf"), "reload_max_abs_diff": diff}


def search_plan(ctx: Context, plan: Plan, options: BuildOptions) -> tuple[Plan, dict]:
    """Returns the searched plan and the search's record: here, or with --ray each round's candidates as Ray
    tasks at once (as many as the cluster has CPUs), the same answer in fewer rounds."""
    if not options.ray:
        return choose_plan(ctx, plan)
    from edgeprune.search.fanout import RayRun, farm_agent_names
    from edgeprune.search.spec import EvaluationSpec

    spec = EvaluationSpec.of(options.model, options.profile, plan, data=options.data, budgets=options.budgets,
                             measure_here=options.measure_here, threads=options.threads, device=options.device,
                             farm=options.farm, prompt_tokens=options.prompt_tokens,
                             generate_tokens=options.generate_tokens)
    with RayRun(spec, options.ray, farm_agent_names(options.farm, ctx.profile.name)) as run:
        return choose_plan(ctx, plan, width=run.width, elsewhere=run)
