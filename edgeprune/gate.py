"""The gate: budgets checked against a build's measurements; a budget the build cannot prove is missed."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from edgeprune.errors import InputError
from edgeprune.measurements import Accuracy, BudgetResult, Generation, Latency, Measurements

LATENCY_STATS = ("median", "p90")
# budgets on a causal LM's generation: Budgets field -> (report name, unit, whether a lower value is better)
GENERATION_BUDGETS = {
    "min_decode_tokens_per_s": ("decode_tokens_per_s", "tokens/s", False),
    "min_prefill_tokens_per_s": ("prefill_tokens_per_s", "tokens/s", False),
    "max_ttft_ms": ("ttft_ms", "ms", True),
}


# The estimator is held to 25% of measurement on models it was not fitted to (benchmarks/estimator_error.py): an
# estimate that far below its measurement clears a budget the device misses unless it is padded by 1 / (1 - 0.25).
ESTIMATE_ERROR_BOUND = 0.25
DEFAULT_ESTIMATE_MARGIN = round(1 / (1 - ESTIMATE_ERROR_BOUND) - 1, 4)


@dataclass(frozen=True)
class Budgets:
    """Limits a build must meet. None means no limit."""

    latency_ms: float | None = None
    latency_stat: str = "median"
    max_size_mb: float | None = None
    max_memory_mb: float | None = None
    max_accuracy_drop: float | None = None
    estimate_margin: float = DEFAULT_ESTIMATE_MARGIN
    # the artifact's latency over the dense model's, both measured in the same run (0.5: twice as fast)
    latency_ratio: float | None = None
    # the largest drop any one slice of the metric may take (evaluate returns slice -> number)
    max_slice_drop: float | None = None
    # a causal LM's generation at the build's context: decode and prompt tokens per second, time to first token
    min_decode_tokens_per_s: float | None = None
    min_prefill_tokens_per_s: float | None = None
    max_ttft_ms: float | None = None

    def __post_init__(self) -> None:
        flags = {"latency_ms": "latency-budget-ms", "max_size_mb": "max-size-mb", "max_memory_mb": "max-memory-mb",
                 "max_accuracy_drop": "max-accuracy-drop", "estimate_margin": "estimate-margin",
                 "latency_ratio": "latency-budget-ratio", "max_slice_drop": "max-slice-drop",
                 **{name: name.replace("_", "-") for name in GENERATION_BUDGETS}}
        for name, flag in flags.items():
            value = getattr(self, name)
            if value is None and name != "estimate_margin":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise InputError(f"--{flag} must be a finite number, got {value!r}")
        for name in ("latency_ms", "max_size_mb", "max_memory_mb", "latency_ratio", *GENERATION_BUDGETS):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise InputError(f"--{flags[name]} must be a positive number, got {value}")
        if self.max_accuracy_drop is not None and self.max_accuracy_drop < 0:
            raise InputError(f"--max-accuracy-drop must be >= 0, got {self.max_accuracy_drop}")
        if self.max_slice_drop is not None and self.max_slice_drop < 0:
            raise InputError(f"--max-slice-drop must be >= 0, got {self.max_slice_drop}")
        if self.latency_stat not in LATENCY_STATS:
            raise InputError(f"--latency-stat must be one of {', '.join(LATENCY_STATS)}, got {self.latency_stat!r}")
        if not 0 <= self.estimate_margin < 1:
            raise InputError(f"--estimate-margin must be in [0, 1), got {self.estimate_margin}")

    def any(self) -> bool:
        return any(v is not None for v in (self.latency_ms, self.max_size_mb, self.max_memory_mb, self.max_accuracy_drop,
                                           self.latency_ratio, self.max_slice_drop, *self.generation_limits()))

    def generation_limits(self) -> tuple[float | None, ...]:
        return tuple(getattr(self, name) for name in GENERATION_BUDGETS)

    def on_latency(self) -> bool:
        """Whether a speed budget is set (milliseconds, a ratio to the dense model, tokens per second, TTFT)."""
        return self.latency_ms is not None or self.latency_ratio is not None or \
            any(v is not None for v in self.generation_limits())

    def to_dict(self) -> dict:
        return asdict(self)


def check_latency(latency: Latency | None, budgets: Budgets, headroom: float = 0.0) -> BudgetResult:
    """Returns the latency budget's result: measured with its noise, or estimated with a margin.

    ``headroom`` pads a measured value (a search's quick timing must clear the budget by that
    much, so that the final, longer measurement does not turn a narrow pass into a miss).
    """
    limit = budgets.latency_ms
    stat = budgets.latency_stat
    name = f"latency_{stat}_ms"
    value = latency.stat(stat) if latency is not None else None
    if value is None:
        why = (latency.note if latency is not None else None) or "no latency was measured or estimated"
        return BudgetResult(name, limit, None, False, "ms", note=f"cannot prove the budget: {why}")
    value = float(value)
    if headroom and not latency.estimated:
        padded = value * (1 + headroom)
        note = f"a quick timing: passes only if {value:.3g} ms x {1 + headroom:.2f} = {padded:.3g} ms <= {limit:g} ms"
        return BudgetResult(name, limit, value, padded <= limit, "ms", note=note)
    return _judge(name, limit, value, latency.estimated, float(latency.spread or 0.0), budgets.estimate_margin,
                  "ms", "the measurement's own spread")


def check_latency_ratio(latency: Latency | None, budgets: Budgets) -> BudgetResult:
    """Returns the ratio budget's result: the artifact's latency over the dense model's, timed side by side.

    The same protocol as the budget in milliseconds: an estimate (of both) must clear the
    margin, and a measured ratio closer to the limit than the two measurements' spreads
    together is undecided, a failed budget.
    """
    limit = budgets.latency_ratio
    stat = budgets.latency_stat
    name = f"latency_{stat}_ratio"
    mine = latency.stat(stat) if latency is not None else None
    dense = latency.baseline_stat(stat) if latency is not None else None
    if mine is None or not dense:
        why = (latency.note if latency is not None else None) or (
            "no latency was measured or estimated" if mine is None else
            "the dense model was not timed side by side with the artifact")
        return BudgetResult(name, limit, None, False, "x dense", note=f"cannot prove the budget: {why}")
    value = round(float(mine) / float(dense), 4)
    # two estimates on one profile swing together: their ratio is judged with the margin alone
    spread = 0.0 if latency.estimated else float(latency.spread or 0.0) + float(latency.baseline_spread or 0.0)
    return _judge(name, limit, value, latency.estimated, spread, budgets.estimate_margin,
                  "x dense", "the two measurements' spread")


def _judge(name: str, limit: float, value: float, estimated: bool, spread: float, margin: float, unit: str,
           whose: str, lower_is_better: bool = True) -> BudgetResult:
    """Judges a measured or estimated figure against its limit: an estimate must clear the margin; a
    measurement closer to the limit than its spread is undecided, a failed budget.

    ``lower_is_better`` False judges a floor (tokens per second) instead of a ceiling.
    """
    shown = f" {unit}" if unit not in ("x dense", "") else ""
    if estimated:  # an estimate's spread: how much slower its device ran at times while probed (estimate_swing)
        # a rate divides by the time: a floor is cleared by the estimate over the factor a time is padded by
        pad = (1 + margin) * (1 + spread)
        sign, factor = ("<=", pad) if lower_is_better else (">=", 1 / pad)
        padded = value * factor
        swung = (f" (the {margin:.0%} margin, and the {spread:.0%} the device's speed swung while probed)"
                 if spread else "")
        note = (f"estimated, not measured: passes only if the estimate x {factor:.2f}{swung} "
                f"= {padded:.3g}{shown} {sign} {limit:g}{shown}")
        met = padded <= limit if lower_is_better else padded >= limit
        return BudgetResult(name, limit, value, met, unit, note=note)
    # The spread is of the times; a rate (tokens per second) divides by them, so its noise band is
    # [value / (1 + spread), value * (1 + spread)], not value -/+ spread x value.
    near = abs(value - limit) <= spread * value if lower_is_better else value / (1 + spread) <= limit <= value * (1 + spread)
    if near:
        note = (f"undecided: {whose} ({spread:.1%}) is larger than the distance to the budget; "
                "re-measure on a quieter device")
        return BudgetResult(name, limit, value, False, unit, note=note)
    return BudgetResult(name, limit, value, value <= limit if lower_is_better else value >= limit, unit)


def undecided(measured: Measurements, budgets: Budgets) -> bool:
    """Whether any budget is undecided by its measurement's own noise (measure again, keep the quieter)."""
    return any(r.undecided for r in check_budgets(measured, budgets))


def latency_undecided(latency: Latency | None, budgets: Budgets) -> bool:
    """Whether a latency budget (in ms or as a ratio) is undecided by the measurement's own noise."""
    results = ([check_latency(latency, budgets)] if budgets.latency_ms is not None else []) + \
        ([check_latency_ratio(latency, budgets)] if budgets.latency_ratio is not None else [])
    return any(r.undecided for r in results)


def check_slices(accuracy: Accuracy | None, budgets: Budgets) -> BudgetResult:
    """Returns the slice budget's result: the worst slice's drop against the limit, the slice named."""
    worst = accuracy.worst() if accuracy is not None else None
    if worst is None:
        why = (accuracy.note if accuracy is not None else None) or "the metric has no slices evaluated on the artifact"
        return BudgetResult("slice_drop", budgets.max_slice_drop, None, False, note=f"cannot prove the budget: {why}")
    return BudgetResult("slice_drop", budgets.max_slice_drop, worst.drop, worst.drop <= budgets.max_slice_drop,
                        slice=worst.name)


def check_budgets(measured: Measurements, budgets: Budgets, headroom: float = 0.0) -> list[BudgetResult]:
    """Returns one result per budget set, each with limit, value, met and a note when unproven."""
    results = []
    if budgets.latency_ms is not None:
        results.append(check_latency(measured.latency, budgets, headroom))
    if budgets.latency_ratio is not None:
        results.append(check_latency_ratio(measured.latency, budgets))
    if budgets.max_size_mb is not None:
        size = measured.size_bytes
        value = size / 1e6 if size is not None else None
        results.append(BudgetResult("size_mb", budgets.max_size_mb, value,
                                    value is not None and value <= budgets.max_size_mb, "MB",
                                    note=None if value is not None else "no artifact size"))
    if budgets.max_memory_mb is not None:
        peak = measured.memory.peak_mb if measured.memory is not None else None
        results.append(BudgetResult("memory_mb", budgets.max_memory_mb, peak,
                                    peak is not None and peak <= budgets.max_memory_mb, "MB",
                                    note=None if peak is not None else "peak memory was not determined"))
    if budgets.max_accuracy_drop is not None:
        acc = measured.accuracy
        drop = acc.drop if acc is not None else None
        note = None if drop is not None else ((acc.note if acc is not None else None)
                                              or "accuracy was not evaluated on the artifact")
        results.append(BudgetResult("accuracy_drop", budgets.max_accuracy_drop, drop,
                                    drop is not None and drop <= budgets.max_accuracy_drop, note=note))
    if budgets.max_slice_drop is not None:
        results.append(check_slices(measured.accuracy, budgets))
    for field_name, (name, unit, lower) in GENERATION_BUDGETS.items():
        limit = getattr(budgets, field_name)
        if limit is not None:
            results.append(check_generation(measured.generation, name, limit, unit, lower, budgets))
    return results


def check_generation(generation: Generation | None, name: str, limit: float, unit: str, lower_is_better: bool,
                     budgets: Budgets) -> BudgetResult:
    """Returns a generation budget's result (tokens per second, TTFT): measured with its spread, or estimated
    with the margin, as a latency is; unproven where the artifact cannot generate token by token."""
    value = getattr(generation, name, None) if generation is not None else None
    if value is None:
        why = (generation.note if generation is not None else None) or "no generation was measured or estimated"
        return BudgetResult(name, limit, None, False, unit, note=f"cannot prove the budget: {why}")
    return _judge(name, limit, float(value), generation.estimated, float(generation.spread or 0.0),
                  budgets.estimate_margin, unit, "the measurement's own spread", lower_is_better)


def missed_budgets(results: Sequence[BudgetResult], verified: bool) -> str:
    """Returns the one line that says what failed: the budgets missed (with value and limit) and the verification."""
    parts = [f"{b.name} {b.value if b.value is not None else 'unproven'} (limit {b.limit:g}"
             + (f", slice {b.slice!r}" if b.slice is not None else "") + ")"
             for b in results if not b.met]
    if not verified:
        parts.append("the artifact is not verified")
    return "missed: " + "; ".join(parts) if parts else "passed"


def refuse_generation_budgets(budgets: Budgets, causal_lm: bool) -> None:
    """Raises InputError, before any work, for budgets on generation of a model that does not generate."""
    if not causal_lm and any(v is not None for v in budgets.generation_limits()):
        flags = [f"--{f.replace('_', '-')}" for f in GENERATION_BUDGETS if getattr(budgets, f) is not None]
        raise InputError(f"{', '.join(flags)}: budgets on generation need a causal LM (a transformers model that "
                         "generates text); this workload is not one")


def refuse_unprovable(budgets: Budgets, has_evaluate: bool, has_slices: bool) -> None:
    """Raises InputError, before any work, for a slice budget the workload's evaluate can never prove."""
    if budgets.max_slice_drop is None:
        return
    if not has_evaluate:
        raise InputError("--max-slice-drop needs a workload with evaluate(); this one has none")
    if not has_slices:
        raise InputError("--max-slice-drop needs evaluate() to return slice name -> number (per class, per "
                         "language); this one returns a single number")
