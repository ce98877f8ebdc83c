"""What a build measures, as types: latency, generation speed, memory, accuracy and the budgets' verdicts.

Every stage that produces a figure (the latency stage, the agent client, ``bench``, a
TensorRT engine, the scorer) builds one of these; the gate judges them, the search records
them and the report holds them. They become dicts only where a report is written or read
(``to_dict`` / ``from_dict``), so report.json keeps one flat, documented layout
(docs/report.schema.json) while the code reads fields, not string keys.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from edgeprune.timing import LatencyStats

Source = Literal["measured", "estimated", "unavailable"]
MEASURED: Source = "measured"
ESTIMATED: Source = "estimated"
UNAVAILABLE: Source = "unavailable"


def plain(value: Any) -> Any:
    """Returns a measurement as JSON data: dataclasses as dicts without their unset (None) fields."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        keep = getattr(value, "_ALWAYS", ())
        out = {}
        for f in dataclasses.fields(value):
            item = getattr(value, f.name)
            if item is None and f.name not in keep:
                continue
            if isinstance(item, (tuple, list)) and not item and f.name not in keep:
                continue
            out[f.name] = plain(item)
        return out
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    return value


def _fields(cls: type, data: Mapping[str, Any]) -> dict[str, Any]:
    """Returns the items of ``data`` that are fields of the dataclass ``cls`` (others are ignored)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in data.items() if k in names}


@dataclass(frozen=True)
class Latency:
    """One artifact's latency where it runs: measured (with its spread), estimated (labelled) or unavailable.

    ``baseline_*`` are the dense model's figures timed side by side with the artifact (the
    speed-up and the ratio budget are against them); ``estimated_ms`` is the roofline estimate
    of the same graph, beside every measurement so the estimator's error always shows.
    """

    source: Source
    device: str
    median_ms: float | None = None
    p90_ms: float | None = None
    min_ms: float | None = None
    p25_ms: float | None = None
    p75_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    runs: int | None = None
    rounds: int | None = None
    spread: float | None = None
    stable: bool | None = None
    baseline_median_ms: float | None = None
    baseline_p90_ms: float | None = None
    baseline_spread: float | None = None
    baseline_runtime: str | None = None
    baseline: LatencyStats | None = None
    speedup: float | None = None
    estimated_ms: float | None = None
    baseline_estimated_ms: float | None = None
    estimate_error: float | None = None
    estimate: Mapping[str, Any] | None = None
    runtime: str | None = None
    agent: str | None = None
    host: str | None = None
    stands_in: str | None = None
    measure_here: bool | None = None
    differs: str | None = None
    threads: int | None = None
    batch: int | None = None
    inputs: tuple[tuple[int, ...], ...] | None = None
    seconds: float | None = None
    artifact: str | None = None
    remeasured: Mapping[str, float] | None = None
    note: str | None = None

    @classmethod
    def measured(cls, mine: LatencyStats, device: str, runtime: str | None, base: LatencyStats | None = None,
                 base_timed: bool = True, **where: Any) -> Latency:
        """Returns a measured latency: the artifact's statistics, and the dense baseline's when timed beside it.

        ``base_timed`` False means the artifact is its own baseline (a dense fp32 build): its
        spread is then not counted twice. ``where`` names the device side (host, agent, threads...).
        """
        mine = mine.rounded()
        stats = {f: getattr(mine, f) for f in ("median_ms", "p90_ms", "min_ms", "p25_ms", "p75_ms", "p99_ms",
                                               "max_ms", "runs", "rounds", "spread", "stable")}
        if base is not None:
            base = base.rounded()
            stats.update(baseline_median_ms=base.median_ms, baseline_p90_ms=base.p90_ms,
                         baseline_spread=round(base.spread or 0.0, 4) if base_timed else 0.0,
                         speedup=round(base.median_ms / mine.median_ms, 4), baseline=base)
        return cls(MEASURED, device, runtime=runtime, **stats, **where)

    @property
    def estimated(self) -> bool:
        return self.source == ESTIMATED

    def stat(self, name: str) -> float | None:
        """Returns the statistic a budget is on (``median`` or ``p90``), in ms."""
        return getattr(self, f"{name}_ms")

    def baseline_stat(self, name: str) -> float | None:
        """Returns the dense baseline's statistic (``median`` or ``p90``), in ms."""
        return getattr(self, f"baseline_{name}_ms")

    def to_dict(self) -> dict[str, Any]:
        return plain(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Latency:
        values = _fields(cls, data)
        if isinstance(values.get("baseline"), Mapping):
            values["baseline"] = LatencyStats.from_dict(values["baseline"])
        if values.get("inputs") is not None:
            values["inputs"] = tuple(tuple(int(d) for d in s) for s in values["inputs"])
        return cls(**values)


@dataclass(frozen=True)
class Generation:
    """How a decoder LLM runs: prompt and decode tokens per second, time to first token, at a context.

    In llama-bench's words: ``pp{prompt_tokens}`` is ``prefill_tokens_per_s`` (the prompt
    processed in one pass), ``tg{generated_tokens}`` is ``decode_tokens_per_s`` (tokens
    generated one at a time after that prompt, reading the KV cache). ``ttft_ms`` is the
    prompt's pass plus picking the first token; ``decode_ms_median``/``p90`` the per-token
    decode latency at that depth.
    """

    source: Source
    device: str
    prompt_tokens: int
    generated_tokens: int
    prefill_tokens_per_s: float | None = None
    decode_tokens_per_s: float | None = None
    ttft_ms: float | None = None
    decode_ms_median: float | None = None
    decode_ms_p90: float | None = None
    load_s: float | None = None
    repeats: int | None = None
    spread: float | None = None
    threads: int | None = None
    runtime: str | None = None
    agent: str | None = None
    host: str | None = None
    stands_in: str | None = None
    estimated_prefill_tokens_per_s: float | None = None
    estimated_decode_tokens_per_s: float | None = None
    estimated_ttft_ms: float | None = None
    estimate_error: Mapping[str, float] | None = None
    estimate: Mapping[str, Any] | None = None
    note: str | None = None

    @property
    def estimated(self) -> bool:
        return self.source == ESTIMATED

    @property
    def context_tokens(self) -> int:
        return self.prompt_tokens + self.generated_tokens

    def to_dict(self) -> dict[str, Any]:
        return plain(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Generation:
        return cls(**_fields(cls, data))


@dataclass(frozen=True)
class Memory:
    """Peak memory of running the artifact: estimated from the graph, or a process's measured peak RSS.

    For a decoder LLM, ``context_tokens`` is the context the peak is at and ``kv_cache_mb``
    the key/value cache's share of it at that context.
    """

    source: Source
    peak_mb: float | None = None
    weights_mb: float | None = None
    activations_peak_mb: float | None = None
    kv_cache_mb: float | None = None
    context_tokens: int | None = None
    peak_at: str | None = None
    method: str | None = None
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return plain(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Memory:
        return cls(**_fields(cls, data))


@dataclass(frozen=True)
class SliceDrop:
    """One slice of the metric: its dense value, its built value and how much it lost (positive is worse)."""

    name: str
    baseline: float
    value: float
    drop: float


@dataclass(frozen=True)
class Accuracy:
    """The workload's metric on the dense model and on the artifact, with its slices.

    ``pruned`` and ``drop`` are absent where the artifact could not run here (``note`` says
    why): an accuracy budget is then unproven.
    """

    metric: str
    higher_is_better: bool | None = None
    baseline: float | None = None
    pruned: float | None = None
    drop: float | None = None
    evaluated_on: str | None = None
    inputs: str | None = None
    before_recovery: float | None = None
    after_recovery: float | None = None
    overall: str | None = None
    slices: tuple[SliceDrop, ...] = ()
    worst_slice: str | None = None
    note: str | None = None

    def worst(self) -> SliceDrop | None:
        """Returns the slice that lost most (``worst_slice`` among ``slices``), or None without slices."""
        if not self.slices:
            return None
        named = [s for s in self.slices if s.name == self.worst_slice]
        return named[0] if named else max(self.slices, key=lambda s: s.drop)

    def to_dict(self) -> dict[str, Any]:
        return plain(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Accuracy:
        values = _fields(cls, data)
        values["slices"] = tuple(SliceDrop(**_fields(SliceDrop, s)) for s in values.get("slices") or ())
        return cls(**values)


@dataclass(frozen=True)
class BudgetResult:
    """One budget's verdict: its limit, the value judged (None when nothing proves it) and whether it was met."""

    _ALWAYS = ("name", "limit", "value", "met")

    name: str
    limit: float
    value: float | None
    met: bool
    unit: str | None = None
    slice: str | None = None
    note: str | None = None

    @property
    def undecided(self) -> bool:
        return bool(self.note and self.note.startswith("undecided"))

    def to_dict(self) -> dict[str, Any]:
        return plain(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BudgetResult:
        return cls(**_fields(cls, data))


@dataclass(frozen=True)
class Measurements:
    """What the gate judges: one evaluation's latency, generation speed, size, memory and accuracy."""

    latency: Latency | None = None
    size_bytes: int | None = None
    memory: Memory | None = None
    accuracy: Accuracy | None = None
    generation: Generation | None = None
