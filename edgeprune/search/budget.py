"""Budget-driven search: the least pruning (and quantization) that meets every budget."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

from edgeprune.errors import UnsupportedError
from edgeprune.planning import Plan
from edgeprune.search.candidates import Candidate, CandidateEvaluator, Elsewhere, Outcome
from edgeprune.search.evaluate import Context

STEP = 0.05
DEFAULT_RECOVER_STEPS = 60


@dataclass
class SearchResult:
    """The chosen candidate (None if none meets every budget) and every candidate tried."""

    chosen: Outcome | None
    tried: list[Outcome] = field(default_factory=list)
    reference: str | None = None  # how a latency ratio became milliseconds

    def nearest(self, count: int = 3) -> list[Outcome]:
        """Returns the candidates that came closest: fewest budgets missed, then least pruned."""
        usable = [o for o in self.tried if o.error is None] or self.tried
        return sorted(usable, key=lambda o: (len(o.misses), o.candidate.sparsity))[:count]

    def to_dict(self) -> dict:
        return {
            "chosen": self.chosen.candidate.label if self.chosen else None,
            "candidates": [o.to_dict() for o in self.tried],
            "nearest": [{"candidate": o.candidate.label, "misses": o.misses} for o in self.nearest()]
            if self.chosen is None else [],
        }


def sparsity_grid(low: float, high: float, kind: str) -> list[float]:
    """Returns the sparsities the search may pick, from least to most pruning."""
    if kind == "nm":
        return [0.0, high]
    count = int(round((high - low) / STEP))
    return [round(low + i * STEP, 4) for i in range(count + 1)]


ACCURACY_MISSES = {"accuracy_drop", "slice_drop"}


def _meets_cost(outcome: Outcome) -> bool:
    return outcome.error is None and not (set(outcome.misses) - ACCURACY_MISSES)


def ratio_in_ms(evaluator: CandidateEvaluator, progress: Callable[[str], None]) -> str | None:
    """Turns a latency budget relative to the dense model into milliseconds for the search; returns why.

    The dense model is timed as every candidate is (the search's quick timing), so the limit
    a candidate must clear is the ratio times the dense model's time under the same protocol.
    The final build judges the ratio itself, the dense model timed side by side with the artifact.
    """
    budgets = evaluator.budgets
    if budgets.latency_ratio is None:
        return None
    progress("time the dense model (the latency ratio's reference)")
    # the search's own first candidate when it tries fp32 (N:M prunes at any amount, so it is not the dense model)
    kind = "none" if evaluator.plan.kind == "nm" else evaluator.plan.kind
    dense = evaluator.cost(Candidate(kind, 0.0, "none"))
    if dense.latency_ms is None:
        return None  # the ratio stays unproven: every candidate misses it
    limit = round(budgets.latency_ratio * dense.latency_ms, 4)
    if budgets.latency_ms is not None:
        limit = min(limit, budgets.latency_ms)
    evaluator.budgets = dataclasses.replace(budgets, latency_ms=limit, latency_ratio=None)
    return (f"latency budget {budgets.latency_ratio:g}x dense: the dense model takes {dense.latency_ms:.3g} ms "
            f"({dense.latency_source}) here, so candidates must take at most {limit:.3g} ms")


def least_pruning(evaluator: CandidateEvaluator, kind: str, quantize: str, grid: list[float],
                  tried: list[Outcome], progress: Callable[[str], None], width: int = 1,
                  elsewhere: Elsewhere | None = None) -> float | None:
    """Returns the smallest sparsity on the grid whose latency and size meet the budgets.

    Bisection: latency and size fall as sparsity rises, so the first passing grid point is
    found in log2(len(grid)) candidate builds. With ``width`` workers (``elsewhere`` evaluates
    candidates at once), each round evaluates up to ``width`` points spread over the interval
    still open, (width+1)-ary: fewer rounds, the same answer.
    """
    def passing(points: list[int]) -> dict[int, bool]:
        candidates = [Candidate(kind, grid[i], quantize) for i in points]
        progress("candidate " + ", ".join(c.label for c in candidates))
        outcomes = evaluator.many(candidates, False, elsewhere)
        tried.extend(outcomes)
        return {i: _meets_cost(o) for i, o in zip(points, outcomes, strict=True)}

    last = len(grid) - 1
    # one at a time, the least pruning is tried alone first: when it passes, nothing else is built
    first = passing(_spread(0, last, width, ends=True) if width > 1 else [0])
    if first[0]:
        return grid[0]
    if width <= 1 and last > 0:
        first.update(passing([last]))
    if len(grid) == 1 or not first[last]:
        return None
    lo, hi = _narrow(first)  # grid[lo] fails, grid[hi] passes
    while hi - lo > 1:
        lo, hi = _narrow({lo: False, hi: True, **passing(_spread(lo, hi, width, ends=False))})
    return grid[hi]


def _spread(lo: int, hi: int, width: int, ends: bool) -> list[int]:
    """Returns up to ``width`` grid indices spread evenly over [lo, hi] (with both ends) or strictly inside.
    With width 1 inside, the midpoint: plain bisection."""
    if ends:
        inner = _spread(lo, hi, width - 2, ends=False) if width > 2 else []
        return sorted({lo, hi, *inner})
    count = min(max(width, 1), hi - lo - 1)
    return sorted({lo + (hi - lo) * (k + 1) // (count + 1) for k in range(count)})


def _narrow(passes: dict[int, bool]) -> tuple[int, int]:
    """Returns (the last failing index before the first passing one, the first passing one)."""
    hi = min(i for i, ok in passes.items() if ok)
    lo = max(i for i, ok in passes.items() if not ok and i < hi)
    return lo, hi


def search(evaluator: CandidateEvaluator, recover_steps: int | None = None,
           progress: Callable[[str], None] = lambda _: None, width: int = 1,
           elsewhere: Elsewhere | None = None) -> SearchResult:
    """Returns the least-pruned candidate of the evaluator's plan that meets every budget.

    For each quantization candidate, bisection finds the least sparsity that meets the
    latency and size budgets; the finalists are scored on accuracy, least pruned first,
    with recovery by distillation when the workload has fine-tuning data. A causal LM's
    finalists (a width for each precision) are all scored, and the one whose metric drops
    least wins: a wider int4 model may lose less perplexity than a narrower fp32 one.
    """
    plan = evaluator.plan
    low, high = plan.search or (plan.sparsity, plan.sparsity)
    grid = sparsity_grid(low, high, plan.kind)
    tried: list[Outcome] = []
    finalists: list[Candidate] = []
    reference = ratio_in_ms(evaluator, progress)
    for quantize in plan.quantize_candidates:
        amount = least_pruning(evaluator, plan.kind, quantize, grid, tried, progress, width, elsewhere)
        if amount is not None:
            finalists.append(Candidate(plan.kind, amount, quantize))
    finalists.sort(key=lambda c: (c.sparsity, plan.quantize_candidates.index(c.quantize)))
    can_recover = bool(evaluator.workload.finetune_data)
    steps = recover_steps if recover_steps else (DEFAULT_RECOVER_STEPS if can_recover else 0)
    if evaluator.workload.is_causal_lm:
        return least_drop(evaluator, finalists, tried, reference, progress)
    for candidate in finalists:
        progress(f"accuracy of {candidate.label}")
        outcome = evaluator.many([candidate], True, elsewhere)[0]  # on a worker too, where there are workers
        tried.append(outcome)
        if not outcome.misses:
            return SearchResult(outcome, tried, reference)
        if ACCURACY_MISSES & set(outcome.misses) and outcome.metric is not None and steps and candidate.sparsity > 0:
            progress(f"recover {candidate.label} ({steps} steps)")
            outcome = evaluator.score(candidate, steps)
            tried.append(outcome)
            if not outcome.misses:
                return SearchResult(outcome, tried, reference)
    return SearchResult(None, tried, reference)


def least_drop(evaluator: CandidateEvaluator, finalists: list[Candidate], tried: list[Outcome],
               reference: str | None, progress: Callable[[str], None]) -> SearchResult:
    """Returns the finalist that meets every budget with the smallest metric drop (the first of equals)."""
    passing = []
    for candidate in finalists:
        progress(f"accuracy of {candidate.label}")
        outcome = evaluator.score(candidate)
        tried.append(outcome)
        if not outcome.misses:
            passing.append(outcome)
    if not passing:
        return SearchResult(None, tried, reference)
    return SearchResult(min(passing, key=lambda o: o.drop if o.drop is not None else float("inf")), tried, reference)


def choose_plan(ctx: Context, plan: Plan, progress: Callable[[str], None] = lambda _: None,
                use_cache: bool = True, width: int = 1, elsewhere: Elsewhere | None = None) -> tuple[Plan, dict]:
    """Returns the plan of the least-pruned candidate meeting the budgets (or the nearest one) and the search's record.

    ``plan.recover`` is the recovery the search may spend on a candidate that misses only
    accuracy (the default when the workload has fine-tuning data and none is given).
    """
    with CandidateEvaluator(ctx, plan, use_cache) as evaluator:
        result = search(evaluator, plan.recover or None, progress, width, elsewhere)
    best = result.chosen or (result.nearest(1) or [None])[0]
    if best is None or best.error is not None:
        raise UnsupportedError("the search found no candidate that builds: " + "; ".join(
            o.error or "" for o in result.tried)[:300])
    goal = ("the smallest metric drop among the least widths that meet every budget at each precision"
            if ctx.workload.is_causal_lm else "the least pruning that meets every budget")
    how = (f"search chose {best.candidate.label}: {goal}"
           if result.chosen else
           f"no candidate meets every budget; building the nearest, {best.candidate.label} "
           f"(misses {', '.join(best.misses)})")
    if best.recovered_steps:
        how += f", after {best.recovered_steps} recovery steps"
    if result.reference:
        how = f"{result.reference}; {how}"
    chosen = evaluator.plan_for(best.candidate, best.recovered_steps)
    return dataclasses.replace(chosen, reasons=(*plan.reasons, how)), result.to_dict()
