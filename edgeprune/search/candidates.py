"""Candidates of a plan: one (strategy, sparsity, quantization) evaluated through the build's own path, cached."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace

from edgeprune import __version__
from edgeprune.gate import check_budgets
from edgeprune.host import this_host
from edgeprune.measure.agent_client import AgentError
from edgeprune.measurements import (
    ESTIMATED,
    MEASURED,
    UNAVAILABLE,
    Accuracy,
    Generation,
    Latency,
    Measurements,
    Memory,
    SliceDrop,
)
from edgeprune.planning import Plan, precision_for
from edgeprune.search.cache import Cache, inputs_fingerprint, model_fingerprint
from edgeprune.search.evaluate import Context, Evaluation, evaluate, score_artifact

# evaluates candidates elsewhere (at a stage, "cost" or "score"), yielding each (candidate, outcome dict) as it is done
Elsewhere = Callable[[list["Candidate"], str], Iterator[tuple["Candidate", dict]]]
# A candidate's quick timing must clear the latency budget by this much (see gate.check_latency).
SEARCH_HEADROOM = 0.15
# what a cached Outcome holds (2: the worst slice too; 3: a causal LM's generation); older entries are not read
OUTCOME_FORMAT = 3


@dataclass(frozen=True)
class Candidate:
    """One point of the search space."""

    kind: str
    sparsity: float
    quantize: str

    @property
    def label(self) -> str:
        if self.kind == "none" or (self.sparsity == 0 and self.kind != "nm"):
            base = "dense"
        else:
            base = f"{self.kind} {self.sparsity:.2f}"
        return base + ("" if self.quantize == "none" else f" + {self.quantize}")


@dataclass
class Outcome:
    """What a candidate costs and scores, as its evaluation recorded it; ``misses`` names the budgets it fails."""

    candidate: Candidate
    latency_ms: float | None = None
    latency_source: str | None = None
    size_bytes: int | None = None
    macs: int | None = None
    nonzero_params: int | None = None
    metric: float | None = None
    drop: float | None = None
    verified: bool | None = None
    recovered_steps: int = 0
    misses: list[str] = field(default_factory=list)
    error: str | None = None
    peak_memory_mb: float | None = None
    worst_slice: str | None = None
    worst_slice_drop: float | None = None
    decode_tokens_per_s: float | None = None
    prefill_tokens_per_s: float | None = None
    ttft_ms: float | None = None
    seconds: dict[str, float] = field(default_factory=dict)  # where its evaluation's time went, by stage
    measured_by: str | None = None  # the agent (name and URL) or machine that measured the latency

    def to_dict(self) -> dict:
        out = asdict(self)
        out["candidate"] = {**asdict(self.candidate), "label": self.candidate.label}
        return out

    def measurements(self, stat: str) -> Measurements:
        """Returns the figures the outcome recorded, as the gate judges them (``stat``: the latency statistic)."""
        latency = (Latency(self.latency_source or UNAVAILABLE, "", **{f"{stat}_ms": self.latency_ms})
                   if self.latency_ms is not None else None)
        worst = ((SliceDrop(self.worst_slice, 0.0, 0.0, self.worst_slice_drop),)
                 if self.worst_slice and self.worst_slice_drop is not None else ())
        accuracy = Accuracy("metric", drop=self.drop, slices=worst, worst_slice=self.worst_slice)
        generation = (Generation(self.latency_source or UNAVAILABLE, "", 1, 1, prefill_tokens_per_s=self.prefill_tokens_per_s,
                                 decode_tokens_per_s=self.decode_tokens_per_s, ttft_ms=self.ttft_ms)
                      if self.decode_tokens_per_s is not None else None)
        return Measurements(latency, self.size_bytes, Memory(ESTIMATED, peak_mb=self.peak_memory_mb), accuracy,
                            generation)

    @classmethod
    def from_dict(cls, data: dict) -> Outcome:
        data = dict(data)
        cand = data.pop("candidate")
        cand.pop("label", None)
        return cls(candidate=Candidate(**cand), **data)


class CandidateEvaluator:
    """Evaluates candidates of one plan with ``evaluate`` (the build's path); results are cached on disk.

    ``cost`` prunes, lowers, verifies and times a candidate; ``score`` adds its metric,
    computed by the artifact. Each candidate is built once per evaluator.
    """

    def __init__(self, ctx: Context, plan: Plan, use_cache: bool = True) -> None:
        self.ctx = ctx
        self.plan = plan
        self.workload = ctx.workload
        self._evaluations: dict[tuple[Candidate, int], Evaluation] = {}
        self._seconds: dict[tuple[Candidate, int], dict[str, float]] = {}
        self.budgets = ctx.budgets  # what misses() judges by (the search turns a latency ratio into milliseconds)
        host = ctx.host or this_host()
        profile = ctx.profile
        self.cache = Cache([__version__, OUTCOME_FORMAT, model_fingerprint(ctx.workload.model),
                            inputs_fingerprint(ctx.workload.calibration_batches()),
                            profile.path.read_text() if profile.path else profile.model_dump_json(),
                            plan.format, type(plan.backend()).__qualname__, plan.criterion, plan.nm, plan.palettize, ctx.threads, ctx.measure_here,
                            [host.description, sorted(host.flags), _runtime_versions()],
                            ctx.agent.identity() if ctx.agent is not None else None], enabled=use_cache)

    def plan_for(self, candidate: Candidate, recover_steps: int = 0) -> Plan:
        """Returns the plan with the candidate's kind, amount and quantization."""
        return replace(self.plan, kind=candidate.kind, sparsity=candidate.sparsity, quantization=candidate.quantize,
                       precision=precision_for(candidate.quantize, self.plan.format), search=None,
                       recover=recover_steps)

    def _evaluation(self, candidate: Candidate, recover_steps: int) -> Evaluation:
        key = (candidate, recover_steps)
        if key not in self._evaluations:
            folder = self.ctx.scratch("candidate")
            seconds: dict[str, float] = {}
            self._evaluations[key] = evaluate(self.ctx, self.plan_for(candidate, recover_steps), folder,
                                              final=False, score=False, step=timed_steps(seconds))
            self._seconds[key] = seconds
        return self._evaluations[key]

    def close(self) -> None:
        """Forgets the candidates' models and artifacts (their folders go with the context)."""
        self._evaluations.clear()

    def __enter__(self) -> CandidateEvaluator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def cost(self, candidate: Candidate) -> Outcome:
        """Returns the candidate's latency, size and MACs (cached)."""
        return self._outcome(candidate, 0, with_metric=False)

    def score(self, candidate: Candidate, recover_steps: int = 0) -> Outcome:
        """Returns the candidate's cost plus its metric computed by the artifact (cached).

        With recovery, the recovered model is a different artifact: it is lowered and timed
        again, so the outcome describes exactly what a build of it would ship.
        """
        return self._outcome(candidate, recover_steps, with_metric=True)

    def many(self, candidates: Sequence[Candidate], with_metric: bool, elsewhere: Elsewhere | None = None,
             advance: Callable[[Outcome], None] = lambda _: None) -> list[Outcome]:
        """Returns the outcomes of several candidates (costs, or with their metric): cached ones from the
        cache, the others evaluated here one by one, or by ``elsewhere`` (workers of a distributed run)
        all at once. Each result is cached as it arrives, so an interrupted run resumes where it stopped."""
        stage = "score-0" if with_metric else "cost"
        found: dict[Candidate, Outcome] = {}
        missing = []
        for candidate in dict.fromkeys(candidates):
            cached = self._cached(candidate, stage, with_metric)
            if cached is None:
                missing.append(candidate)
            else:
                found[candidate] = cached
                advance(cached)
        if elsewhere is None:
            for candidate in missing:
                found[candidate] = self._outcome(candidate, 0, with_metric)
                advance(found[candidate])
        elif missing:
            for candidate, data in elsewhere(missing, "score" if with_metric else "cost"):
                outcome = Outcome.from_dict(data)
                outcome.misses = self.misses(outcome, with_accuracy=with_metric)
                self.cache.store(outcome.to_dict(), asdict(candidate), stage)
                found[candidate] = outcome
                advance(outcome)
        return [found[c] for c in candidates]

    def _cached(self, candidate: Candidate, stage: str, with_metric: bool) -> Outcome | None:
        """Returns the cached outcome of a candidate at a stage (None when there is none, or it is damaged)."""
        cached = self.cache.load(asdict(candidate), stage)
        if cached is not None:
            try:
                outcome = Outcome.from_dict(cached)
                if not isinstance(outcome.misses, list) or any(
                        v is not None and not isinstance(v, (int, float)) for v in
                        (outcome.latency_ms, outcome.size_bytes, outcome.metric, outcome.drop,
                         outcome.worst_slice_drop)):
                    raise TypeError("fields of the wrong type")
            except (TypeError, KeyError, ValueError, AttributeError) as exc:
                self.cache.discard(self.cache.path(asdict(candidate), stage), f"{type(exc).__name__}: {exc}"[:120])
                outcome = None
            if outcome is not None:
                # the cache holds costs and scores; which budgets they miss depends on this build's budgets
                outcome.misses = self.misses(outcome, with_accuracy=with_metric)
                return outcome
        return None

    def _outcome(self, candidate: Candidate, recover_steps: int, with_metric: bool) -> Outcome:
        stage = f"score-{recover_steps}" if with_metric else "cost"
        cached = self._cached(candidate, stage, with_metric)
        if cached is not None:
            return cached
        outcome = Outcome(candidate, recovered_steps=recover_steps)
        try:
            evaluation = self._evaluation(candidate, recover_steps)
            seconds = self._seconds[(candidate, recover_steps)]
            if with_metric and evaluation.accuracy is None:
                with timed_steps(seconds)("evaluate accuracy"):
                    score_artifact(self.ctx, evaluation)
            record(outcome, evaluation, self.ctx.budgets.latency_stat)
            outcome.seconds = dict(seconds)
            if evaluation.latency.seconds is not None:  # of "measure": the device's own timing, the rest upload
                outcome.seconds["device"] = evaluation.latency.seconds
        except Exception as exc:  # a candidate that cannot be built is recorded, not fatal
            if isinstance(exc, AgentError) and exc.kind != "refused":
                raise  # the device is unreachable: nothing is known of the candidate, so nothing is recorded
            outcome.error = f"{type(exc).__name__}: {exc}"[:300]
        outcome.misses = self.misses(outcome, with_accuracy=with_metric)
        self.cache.store(outcome.to_dict(), asdict(candidate), stage)
        return outcome

    def misses(self, outcome: Outcome, with_accuracy: bool) -> list[str]:
        """Returns the names of the budgets the outcome does not meet (or cannot prove)."""
        if outcome.error:
            return ["build"]
        budgets = self.budgets if with_accuracy else replace(self.budgets, max_accuracy_drop=None,
                                                                         max_slice_drop=None)
        missed = [r.name for r in check_budgets(outcome.measurements(budgets.latency_stat), budgets, SEARCH_HEADROOM)
                  if not r.met]
        return missed + (["verification"] if outcome.verified is False else [])


def timed_steps(seconds: dict[str, float]) -> Callable:
    """Returns an evaluation ``step`` that adds each stage's seconds to ``seconds`` under the stage's first word
    (prune, lower, verify, measure or estimate, evaluate): where a candidate's time goes."""
    @contextmanager
    def step(name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            word = name.split()[0]
            seconds[word] = round(seconds.get(word, 0.0) + time.perf_counter() - start, 4)

    return step


def _runtime_versions() -> list[str]:
    """Returns the versions of the libraries that lower and time a candidate here (a new one may change it)."""
    from importlib import metadata

    found = []
    for name in ("torch", "onnx", "onnxruntime"):
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            found.append(f"{name} -")
    return found


def record(outcome: Outcome, evaluation: Evaluation, stat: str) -> None:
    """Copies an evaluation's figures into the outcome (what the sweep table and the search's report show)."""
    latency = evaluation.latency
    outcome.latency_ms = latency.stat(stat)
    outcome.latency_source = latency.source
    outcome.measured_by = (latency.agent or latency.device) if latency.source == MEASURED else None
    outcome.size_bytes = evaluation.artifact.size_bytes
    outcome.peak_memory_mb = evaluation.memory.peak_mb
    outcome.macs, outcome.nonzero_params = evaluation.stats["macs"], evaluation.stats["nonzero_params"]
    outcome.verified = evaluation.verification.passed
    if evaluation.generation is not None:
        g = evaluation.generation
        outcome.decode_tokens_per_s, outcome.prefill_tokens_per_s, outcome.ttft_ms = (
            g.decode_tokens_per_s, g.prefill_tokens_per_s, g.ttft_ms)
    if evaluation.accuracy is not None:
        outcome.metric = evaluation.accuracy.pruned
        outcome.drop = evaluation.accuracy.drop
        worst = evaluation.accuracy.worst()
        if worst is not None:
            outcome.worst_slice, outcome.worst_slice_drop = worst.name, worst.drop
