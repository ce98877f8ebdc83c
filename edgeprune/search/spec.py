"""An evaluation as plain data: what a worker in another process, or on another machine, needs to
evaluate candidates of a plan, and nothing it would have to share with the process that asked.

``EvaluationSpec`` names the model by its argument (a workload file is imported again by the
worker, an ``hf:`` folder or a ``.pt2`` loaded again), the data folder, the profile, the frozen
plan, the budgets and how to time; it round-trips through JSON. ``evaluate_candidate(spec,
candidate)`` returns the candidate's Outcome from the spec alone, the result a serial sweep
records for it: the live models, temporary folders and caches it needs are built on first use
and kept per process, keyed by the spec, so a worker given many candidates of one spec loads
the workload once. A Workload handed over as a Python object (its lambdas and live model
cannot cross a process) has no spec: distributed runs refuse it in one line.
"""

from __future__ import annotations

import atexit
import json
from dataclasses import asdict, dataclass, field, fields

from edgeprune.errors import InputError
from edgeprune.gate import Budgets
from edgeprune.planning import Plan
from edgeprune.search.candidates import Candidate, CandidateEvaluator, Outcome

SPEC_FORMAT = 1


@dataclass(frozen=True)
class EvaluationSpec:
    """Everything that decides a candidate's outcome, as values that cross a process."""

    model: str
    profile: str
    plan: Plan
    data: str | None = None
    budgets: Budgets = field(default_factory=Budgets)
    measure_here: bool = False
    threads: int | None = None
    device: str | None = None
    farm: str | None = None
    prompt_tokens: int = 512
    generate_tokens: int = 128
    use_cache: bool = True

    @classmethod
    def of(cls, model, profile: str, plan: Plan, **options) -> EvaluationSpec:
        """Returns the spec of an evaluation; InputError for a model given as a live object."""
        if not isinstance(model, str):
            raise InputError(f"a workload given as a Python object ({type(model).__name__}) cannot be loaded again by "
                             "another process: give its model argument (path/to/workload.py[:function], hf:DIR, "
                             "timm:NAME, model.pt2) to run it distributed")
        return cls(model=model, profile=str(profile), plan=plan, **options)

    def to_json(self) -> str:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["plan"] = self.plan.to_dict()
        data["budgets"] = asdict(self.budgets)
        return json.dumps({"format": SPEC_FORMAT, **data}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> EvaluationSpec:
        data = json.loads(text)
        if data.pop("format", None) != SPEC_FORMAT:
            raise InputError(f"an evaluation spec of another format than {SPEC_FORMAT}")
        plan = dict(data["plan"])
        plan["nm"] = tuple(int(v) for v in plan["nm"].split(":")) if plan.get("nm") else None
        plan["search"] = tuple(plan["search"]) if plan.get("search") else None
        plan["reasons"] = tuple(plan.get("reasons", ()))
        plan["quantize_candidates"] = tuple(plan.get("quantize_candidates", ()))
        data["plan"] = Plan(**plan)
        data["budgets"] = Budgets(**data["budgets"])
        return cls(**data)


# this process's evaluators, one per spec: built on first use, closed when the process ends
_EVALUATORS: dict[str, CandidateEvaluator] = {}


def evaluate_candidate(spec: EvaluationSpec, candidate: Candidate, stage: str = "score", pool=None) -> Outcome:
    """Returns the candidate's outcome from the spec alone: its cost (``stage`` "cost": latency, size, MACs)
    or also its metric through the artifact ("score"). ``pool``: the farm's leases a distributed run shares."""
    key = spec.to_json()
    evaluator = _EVALUATORS.get(key)
    if evaluator is None:
        evaluator = _evaluator(spec, pool)
        _EVALUATORS[key] = evaluator
    return evaluator.cost(candidate) if stage == "cost" else evaluator.score(candidate)


def _evaluator(spec: EvaluationSpec, pool=None) -> CandidateEvaluator:
    from edgeprune.farm.farm import connect_device
    from edgeprune.measure.generation import GenerationSettings
    from edgeprune.profile import load_profile
    from edgeprune.search.evaluate import Context
    from edgeprune.specs import load_workload

    profile = load_profile(spec.profile)
    ctx = Context(load_workload(spec.model, spec.data), profile, spec.budgets,
                  measure_here=spec.measure_here, threads=spec.threads,
                  agent=connect_device(spec.device, spec.farm, profile.name, pool),
                  generation=GenerationSettings(spec.prompt_tokens, spec.generate_tokens))
    evaluator = CandidateEvaluator(ctx, spec.plan, spec.use_cache)
    atexit.register(ctx.close)
    return evaluator


def forget_evaluations() -> None:
    """Closes this process's evaluators and their contexts (their models, folders and sessions)."""
    for evaluator in _EVALUATORS.values():
        evaluator.close()
        evaluator.ctx.close()
    _EVALUATORS.clear()
