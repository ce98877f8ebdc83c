"""The gate: budgets checked against a build's measurements; a budget the build cannot prove is missed."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from edgeprune.errors import InputError
from edgeprune.metric import worst_slice

LATENCY_STATS = ("median", "p90")


@dataclass(frozen=True)
class Budgets:
    """Limits a build must meet. None means no limit."""

    latency_ms: float | None = None
    latency_stat: str = "median"
    max_size_mb: float | None = None
    max_memory_mb: float | None = None
    max_accuracy_drop: float | None = None
    estimate_margin: float = 0.2
    # the artifact's latency over the dense model's, both measured in the same run (0.5: twice as fast)
    latency_ratio: float | None = None
    # the largest drop any one slice of the metric may take (evaluate returns slice -> number)
    max_slice_drop: float | None = None

    def __post_init__(self) -> None:
        flags = {"latency_ms": "latency-budget-ms", "max_size_mb": "max-size-mb", "max_memory_mb": "max-memory-mb",
                 "max_accuracy_drop": "max-accuracy-drop", "estimate_margin": "estimate-margin",
                 "latency_ratio": "latency-budget-ratio", "max_slice_drop": "max-slice-drop"}
        for name, flag in flags.items():
            value = getattr(self, name)
            if value is None and name != "estimate_margin":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise InputError(f"--{flag} must be a finite number, got {value!r}")
        for name in ("latency_ms", "max_size_mb", "max_memory_mb", "latency_ratio"):
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
                                           self.latency_ratio, self.max_slice_drop))

    def on_latency(self) -> bool:
        """Whether a latency budget is set (in milliseconds or as a ratio to the dense model)."""
        return self.latency_ms is not None or self.latency_ratio is not None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Measurements:
    """What the gate judges: the latency section (measured or estimated, with its spread), the
    artifact's size, the peak memory and the accuracy section, as one evaluation recorded them."""

    latency: dict | None = None
    size_bytes: int | None = None
    memory: dict = field(default_factory=dict)
    accuracy: dict = field(default_factory=dict)

    @classmethod
    def of_report(cls, report: dict) -> Measurements:
        """Returns the measurements a stored report holds (a report read back for ``edgeprune check``)."""
        return cls(latency=report.get("latency"), size_bytes=(report.get("artifact") or {}).get("size_bytes"),
                   memory=report.get("memory") or {}, accuracy=report.get("accuracy") or {})


def _result(name: str, limit: float, value: float | None, met: bool, note: str = "", unit: str = "") -> dict:
    out: dict[str, Any] = {"name": name, "limit": limit, "value": value, "met": met}
    if unit:
        out["unit"] = unit
    if note:
        out["note"] = note
    return out


def check_latency(latency: dict | None, budgets: Budgets, headroom: float = 0.0) -> dict:
    """Returns the latency budget's result: measured with its noise, or estimated with a margin.

    ``headroom`` pads a measured value (a search's quick timing must clear the budget by that
    much, so that the final, longer measurement does not turn a narrow pass into a miss).
    """
    limit = budgets.latency_ms
    stat = budgets.latency_stat
    name = f"latency_{stat}_ms"
    if not latency or latency.get(f"{stat}_ms") is None:
        why = (latency or {}).get("note") or "no latency was measured or estimated"
        return _result(name, limit, None, False, f"cannot prove the budget: {why}", "ms")
    value = float(latency[f"{stat}_ms"])
    if headroom and latency.get("source") != "estimated":
        padded = value * (1 + headroom)
        note = f"a quick timing: passes only if {value:.3g} ms x {1 + headroom:.2f} = {padded:.3g} ms <= {limit:g} ms"
        return _result(name, limit, value, padded <= limit, note, "ms")
    return _judge(name, limit, value, latency.get("source") == "estimated", float(latency.get("spread") or 0.0),
                  budgets.estimate_margin, "ms", "the measurement's own spread")


def check_latency_ratio(latency: dict | None, budgets: Budgets) -> dict:
    """Returns the ratio budget's result: the artifact's latency over the dense model's, timed side by side.

    The same protocol as the budget in milliseconds: an estimate (of both) must clear the
    margin, and a measured ratio closer to the limit than the two measurements' spreads
    together is undecided, a failed budget.
    """
    limit = budgets.latency_ratio
    stat = budgets.latency_stat
    name = f"latency_{stat}_ratio"
    mine = (latency or {}).get(f"{stat}_ms")
    dense = (latency or {}).get(f"baseline_{stat}_ms")
    if mine is None or not dense:
        why = (latency or {}).get("note") or ("no latency was measured or estimated" if mine is None else
                                              "the dense model was not timed side by side with the artifact")
        return _result(name, limit, None, False, f"cannot prove the budget: {why}", "x dense")
    value = round(float(mine) / float(dense), 4)
    spread = float(latency.get("spread") or 0.0) + float(latency.get("baseline_spread") or 0.0)
    return _judge(name, limit, value, latency.get("source") == "estimated", spread, budgets.estimate_margin,
                  "x dense", "the two measurements' spread")


def _judge(name: str, limit: float, value: float, estimated: bool, spread: float, margin: float, unit: str,
           whose: str) -> dict:
    """Judges a latency figure against its limit: an estimate must clear the margin; a measurement
    closer to the limit than its spread is undecided, a failed budget."""
    shown = f" {unit}" if unit == "ms" else ""
    if estimated:
        padded = value * (1 + margin)
        note = (f"estimated, not measured: passes only if the estimate x {1 + margin:.2f} "
                f"= {padded:.3g}{shown} <= {limit:g}{shown}")
        return _result(name, limit, value, padded <= limit, note, unit)
    if abs(value - limit) <= spread * value:
        note = (f"undecided: {whose} ({spread:.1%}) is larger than the distance to the budget; "
                "re-measure on a quieter device")
        return _result(name, limit, value, False, note, unit)
    return _result(name, limit, value, value <= limit, "", unit)


def latency_undecided(latency: dict | None, budgets: Budgets) -> bool:
    """Whether a latency budget (in ms or as a ratio) is undecided by the measurement's own noise."""
    results = ([check_latency(latency, budgets)] if budgets.latency_ms is not None else []) + \
        ([check_latency_ratio(latency, budgets)] if budgets.latency_ratio is not None else [])
    return any(r.get("note", "").startswith("undecided") for r in results)


def check_slices(accuracy: dict, budgets: Budgets) -> dict:
    """Returns the slice budget's result: the worst slice's drop against the limit, the slice named."""
    worst = worst_slice(accuracy)
    if worst is None:
        why = accuracy.get("note") or "the metric has no slices evaluated on the artifact"
        return _result("slice_drop", budgets.max_slice_drop, None, False, f"cannot prove the budget: {why}")
    out = _result("slice_drop", budgets.max_slice_drop, worst["drop"], worst["drop"] <= budgets.max_slice_drop)
    out["slice"] = str(worst["name"])
    return out


def check_budgets(measured: Measurements, budgets: Budgets, headroom: float = 0.0) -> list[dict]:
    """Returns one result per budget set, each with limit, value, met and a note when unproven."""
    results = []
    if budgets.latency_ms is not None:
        results.append(check_latency(measured.latency, budgets, headroom))
    if budgets.latency_ratio is not None:
        results.append(check_latency_ratio(measured.latency, budgets))
    if budgets.max_size_mb is not None:
        size = measured.size_bytes
        value = size / 1e6 if size is not None else None
        results.append(_result("size_mb", budgets.max_size_mb, value,
                               value is not None and value <= budgets.max_size_mb,
                               "" if value is not None else "no artifact size", "MB"))
    if budgets.max_memory_mb is not None:
        peak = measured.memory.get("peak_mb")
        results.append(_result("memory_mb", budgets.max_memory_mb, peak,
                               peak is not None and peak <= budgets.max_memory_mb,
                               "" if peak is not None else "peak memory was not determined", "MB"))
    if budgets.max_accuracy_drop is not None:
        acc = measured.accuracy
        drop = acc.get("drop")
        note = "" if drop is not None else (acc.get("note") or "accuracy was not evaluated on the artifact")
        results.append(_result("accuracy_drop", budgets.max_accuracy_drop, drop,
                               drop is not None and drop <= budgets.max_accuracy_drop, note))
    if budgets.max_slice_drop is not None:
        results.append(check_slices(measured.accuracy, budgets))
    return results


def refuse_unprovable(budgets: Budgets, has_evaluate: bool, has_slices: bool) -> None:
    """Raises InputError, before any work, for a slice budget the workload's evaluate can never prove."""
    if budgets.max_slice_drop is None:
        return
    if not has_evaluate:
        raise InputError("--max-slice-drop needs a workload with evaluate(); this one has none")
    if not has_slices:
        raise InputError("--max-slice-drop needs evaluate() to return slice name -> number (per class, per "
                         "language); this one returns a single number")
