"""The Python API: a build, a plan and a sweep without the command line.

    import edgeprune
    report = edgeprune.build("examples/digits_cnn.py", profile="x86-avx2", output="out/digits",
                             latency_budget_ms=2.0, max_accuracy_drop=0.01)
    report.passed, report.latency.median_ms

The first argument is a workload file spec (``path/to/file.py[:function]``), a target file
(``.toml``) or an ``edgeprune.Workload``; keyword arguments are the options of ``edgeprune
build`` with underscores (they win over a target file's keys).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeprune.errors import BudgetMissed, InputError
from edgeprune.gate import Budgets, missed_budgets
from edgeprune.output import check_writable
from edgeprune.profile import load_profile
from edgeprune.report import Report
from edgeprune.report.mlflow_run import check_tracking, log_sweep
from edgeprune.target import (
    BuildOptions,
    budgets_from,
    check_device_flags,
    check_measure_flags,
    options_from,
)
from edgeprune.vocabulary import QUANTIZE, STRATEGIES

# The modules that need torch (the workload, the plan, the pipeline, the search) are imported
# where they are used, after the checks that need none of them: a refused call answers at once.
if TYPE_CHECKING:
    from edgeprune.planning import Plan
    from edgeprune.search.candidates import Outcome
    from edgeprune.search.fanout import FanOut
    from edgeprune.workload import Workload

SWEEP_STRATEGIES = tuple(s for s in STRATEGIES if s != "none")


def load_target(path: str | Path, **overrides: Any) -> BuildOptions:
    """Returns the build options a target file holds (``overrides`` win over its keys)."""
    if not str(path).endswith(".toml"):
        raise InputError(f"a target file is a .toml file, got {path}")
    return options_from(str(path), overrides)


def build(workload_or_spec: Workload | str | Path, profile: str | None = None, *, output: str | Path | None = None,
          fail_on_miss: bool = False, step: Callable | None = None, **options: Any) -> Report:
    """Returns the report of a build written into ``output``.

    A missed or unproven budget leaves ``report.passed`` False (the command line's exit code
    3); with ``fail_on_miss`` it raises ``BudgetMissed`` instead, the report in its ``report``.
    """
    workload, spec = _workload_and_spec(workload_or_spec)
    given = {**options, "profile": profile, "output": Path(output) if output is not None else None}
    build_options = options_from(spec, given)
    from edgeprune.pipeline import run_build
    from edgeprune.search.evaluate import silent_step

    report = run_build(build_options, step=step or silent_step, workload=workload)
    if fail_on_miss and not report.passed:
        raise BudgetMissed(missed_budgets(report.budgets, report.verified), report)
    return report


def plan(workload_or_spec: Workload | str | Path, profile: str, *, data: str | Path | None = None,
         strategy: str = "auto",
         sparsity: float | None = None, quantize: str = "auto", format: str = "auto", criterion: str | None = None,
         nm: str = "2:4", recover: int = 0, palettize: int | None = None, budgets: Budgets | None = None,
         **budget_keys: Any) -> Plan:
    """Returns what a build would do for the profile, and why, without building.

    Budgets come as a ``Budgets`` or as build's keywords (``latency_budget_ms=2.0``, ...).
    """
    prof = load_profile(profile)
    from edgeprune.planning import make_plan
    from edgeprune.specs import load_workload

    workload = _workload_and_spec(workload_or_spec)[0] or load_workload(str(workload_or_spec), data)
    return make_plan(workload, prof, strategy, sparsity, quantize, format, criterion, nm,
                     budgets or budgets_from(budget_keys), recover, palettize)


def sweep(workload_or_spec: Workload | str | Path, profile: str, output: str | Path, *,
          strategies: Sequence[str] = ("structured", "unstructured", "nm"), sparsities: Sequence[float] = (0.25, 0.5, 0.75),
          quantize: Sequence[str] | str = "auto", format: str = "auto", criterion: str | None = None,
          data: str | Path | None = None, use_cache: bool = True, measure_here: bool = False, mlflow: str | None = None,
          device: str | None = None, farm: str | Path | None = None, ray: str | None = None,
          advance: Callable[[Outcome], None] = lambda _: None, total: Callable[[int], None] = lambda _: None,
          fanout: Callable[[FanOut], None] = lambda _: None) -> dict:
    """Returns the sweep's summary after writing sweep.json, sweep.md, pareto.png and report.html into ``output``.

    Every candidate is evaluated as a build of it would be (cached, so a rerun resumes);
    ``quantize='auto'`` is none plus what the profile runs fastest. ``total(n)`` is told the
    number of candidates and ``advance(outcome)`` each one as it is done (progress). ``mlflow``:
    log the sweep to that MLflow tracking URI ('' for the default, as ``--mlflow`` without a value).
    ``device``/``farm``: measure on that agent, or on a farm file's agents for the profile. ``ray``:
    evaluate the candidates as Ray tasks ("local" starts Ray for the sweep, else a cluster's address);
    ``fanout(state)`` is told what they are doing (queued, running, done, each agent's state).
    """
    bad = [k for k in strategies if k not in SWEEP_STRATEGIES]
    if bad or not strategies:
        raise InputError(f"--strategies: {'unknown strategy ' + repr(bad[0]) if bad else 'none given'} "
                         f"(choose from {', '.join(SWEEP_STRATEGIES)})")
    if not sparsities or any(isinstance(a, bool) or not isinstance(a, (int, float)) or not 0 < a < 1
                             for a in sparsities):
        raise InputError("--sparsities must each be a number in (0, 1), and at least one is needed")
    check_writable(Path(output))
    if Path(output).exists() and not Path(output).is_dir():
        raise InputError(f"-o {output} exists and is not a folder")
    tracking = check_tracking(mlflow) if mlflow is not None else None
    prof = load_profile(profile)
    check_measure_flags(prof, measure_here)  # refused as build refuses it, before any candidate is built
    farm = str(farm) if farm is not None else None
    check_device_flags(prof.name, device, farm)
    from edgeprune.farm.farm import connect_device
    from edgeprune.planning import make_plan, precision_for
    from edgeprune.search.candidates import CandidateEvaluator
    from edgeprune.search.evaluate import Context
    from edgeprune.search.sweep import grid, run_sweep, write_sweep
    from edgeprune.specs import load_workload

    workload = _workload_and_spec(workload_or_spec)[0] or load_workload(str(workload_or_spec), data)
    base = make_plan(workload, prof, "none", None, "auto" if quantize == "auto" else "none", format, criterion)
    precisions = list(base.quantize_candidates) if quantize == "auto" else list(quantize)
    bad = [q for q in precisions if q not in QUANTIZE]
    if bad or not precisions:
        raise InputError(f"--quantize: {'unknown precision ' + repr(bad[0]) if bad else 'none given'} "
                         f"(choose from {', '.join(QUANTIZE)})")
    backend = base.backend()
    for q in precisions:  # a precision the profile or format does not run is refused before any work, as build does
        backend.check(replace(base, precision=precision_for(q, base.format)).lower_request(prof, ()))
    candidates = grid(list(strategies), [float(a) for a in sparsities], precisions)
    total(len(candidates))
    if ray is not None:  # refused before any work when the workload cannot cross a process
        from edgeprune.search.spec import EvaluationSpec

        model_arg = str(workload_or_spec) if isinstance(workload_or_spec, (str, Path)) else workload_or_spec
        spec = EvaluationSpec.of(model_arg, profile, base,
                                 data=str(data) if data is not None else None, measure_here=measure_here,
                                 device=device, farm=farm, use_cache=use_cache)
    agent = connect_device(device, farm, prof.name)
    with Context(workload, prof, Budgets(), measure_here=measure_here, agent=agent) as ctx, \
            CandidateEvaluator(ctx, base, use_cache) as evaluator:
        agents = None
        if ray is None:
            outcomes = run_sweep(evaluator, candidates, advance)
            agents = agent.pool.snapshot() if farm else None
        else:
            from edgeprune.search.fanout import RayRun, farm_agent_names

            with RayRun(spec, ray, farm_agent_names(farm, prof.name), fanout) as run:
                outcomes = evaluator.many(candidates, True, run, advance)
                agents = run.fanout.agents or None
    title = f"{workload.name} on {prof.name} ({base.format})"
    summary = write_sweep(outcomes, Path(output), workload.metric, workload.higher_is_better, title, agents)
    if tracking is not None:
        options = {"model": str(workload_or_spec) if isinstance(workload_or_spec, (str, Path)) else workload.name,
                   "profile": prof.name, "format": base.format, "strategies": ",".join(strategies),
                   "sparsities": ",".join(f"{a:g}" for a in sparsities), "quantize": ",".join(precisions),
                   "criterion": criterion, "measure_here": measure_here, "device": device, "farm": farm,
                   "ray": ray}
        log_sweep(summary, options, Path(output), tracking)
    return summary


def _workload_and_spec(workload_or_spec: Workload | str | Path) -> tuple[Workload | None, str]:
    if isinstance(workload_or_spec, (str, Path)):
        return None, str(workload_or_spec)
    from edgeprune.workload import Workload

    if isinstance(workload_or_spec, Workload):
        return workload_or_spec, workload_or_spec.name
    raise InputError(f"build takes a workload spec, a target file or an edgeprune.Workload, "
                     f"got {type(workload_or_spec).__name__}")
