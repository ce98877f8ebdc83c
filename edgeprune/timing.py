"""The timing protocol: warm-up, then rounds of timed runs until the median is stable."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace


@dataclass(frozen=True)
class LatencyStats:
    """Latency of one artifact in milliseconds, with the noise of the measurement itself.

    ``spread`` is the relative difference between the slowest and fastest round medians:
    how much the median moved across rounds. A gate cannot decide a budget closer than that.
    The quartiles, p99 and max describe the distribution of single runs (report.html draws it).
    """

    median_ms: float
    p90_ms: float
    min_ms: float | None = None
    runs: int | None = None
    rounds: int | None = None
    spread: float | None = None
    stable: bool | None = None
    p25_ms: float | None = None
    p75_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def rounded(self) -> LatencyStats:
        """Returns the statistics with times and spread rounded to 4 decimals, as reports keep them."""
        return replace(self, **{f.name: round(v, 4) for f in fields(self)
                                if isinstance(v := getattr(self, f.name), float)})

    @classmethod
    def from_dict(cls, data: dict) -> LatencyStats:
        """Returns the statistics a dict holds (a report's or an agent's reply); other keys are ignored."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class Protocol:
    """How long to time: warm-up, rounds, and when the median counts as stable."""

    warmup_s: float = 0.2
    round_s: float = 0.25
    min_rounds: int = 4
    max_rounds: int = 16
    min_runs_per_round: int = 3
    tolerance: float = 0.03

    @classmethod
    def quick(cls) -> Protocol:
        return cls(warmup_s=0.05, round_s=0.08, min_rounds=3, max_rounds=6)


def _round(fn: Callable[[], object], seconds: float, min_runs: int) -> list[float]:
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(times) < min_runs or time.perf_counter() < deadline:
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def _warmup(fn: Callable[[], object], seconds: float) -> None:
    deadline = time.perf_counter() + seconds
    fn()
    while time.perf_counter() < deadline:
        fn()


def _stats(times: list[float], round_medians: list[float], tolerance: float) -> LatencyStats:
    ordered = sorted(times)
    median = statistics.median(ordered)

    def rank(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]

    spread = (max(round_medians) - min(round_medians)) / median if median > 0 else 0.0
    return LatencyStats(
        median_ms=median, p90_ms=rank(0.9), min_ms=ordered[0], runs=len(times),
        rounds=len(round_medians), spread=spread, stable=spread <= 2 * tolerance,
        p25_ms=rank(0.25), p75_ms=rank(0.75), p99_ms=rank(0.99), max_ms=ordered[-1],
    )


def _settled(round_medians: list[float], tolerance: float) -> bool:
    """True when the median of all rounds so far barely moves if the last round is dropped."""
    if len(round_medians) < 3:
        return False
    now = statistics.median(round_medians)
    before = statistics.median(round_medians[:-1])
    return abs(now - before) <= tolerance * now


def time_callable(fn: Callable[[], object], protocol: Protocol | None = None) -> LatencyStats:
    """Returns latency statistics of ``fn()`` under the protocol."""
    return time_side_by_side({"x": fn}, protocol)["x"]


def timed_rounds(
    fns: dict[str, Callable[[], object]], protocol: Protocol | None = None
) -> dict[str, list[list[float]]]:
    """Returns each callable's run times in ms, round by round, timed in interleaved rounds until every
    callable's median settles: round i of each callable ran between round i - 1 and round i + 1 of the others."""
    p = protocol or Protocol()
    for fn in fns.values():
        _warmup(fn, p.warmup_s)
    rounds: dict[str, list[list[float]]] = {k: [] for k in fns}
    for i in range(p.max_rounds):
        for key, fn in fns.items():
            rounds[key].append(_round(fn, p.round_s, p.min_runs_per_round))
        if i + 1 >= p.min_rounds and all(_settled([statistics.median(r) for r in v], p.tolerance)
                                         for v in rounds.values()):
            break
    return rounds


def round_stats(rounds: list[list[float]], tolerance: float = Protocol.tolerance) -> LatencyStats:
    """Returns the latency statistics of one callable's rounds (as ``timed_rounds`` gives them)."""
    return _stats([t for r in rounds for t in r], [statistics.median(r) for r in rounds], tolerance)


MIN_QUIET_ROUNDS = 3  # quiet rounds a figure taken on them needs; with fewer, the machine was not quiet enough


def quiet_rounds(marker: list[float], limit_ms: float) -> list[int]:
    """Returns which rounds ran while the machine was quiet, by a marker timed last in every cycle of rounds
    (``timed_rounds``; ``marker``: its round medians): round i of the others ran between the marker's rounds
    i - 1 and i, and is quiet when both (the first round: the one after it) ran within ``limit_ms``."""
    return [i for i, m in enumerate(marker) if m <= limit_ms and (i == 0 or marker[i - 1] <= limit_ms)]


def time_side_by_side(
    fns: dict[str, Callable[[], object]], protocol: Protocol | None = None
) -> dict[str, LatencyStats]:
    """Returns latency statistics for each callable, measured in interleaved rounds.

    Interleaving means a burst of load on the machine hits every candidate alike, so the
    ratios between them (speed-ups) hold even where absolute numbers drift.
    """
    p = protocol or Protocol()
    return {k: round_stats(r, p.tolerance) for k, r in timed_rounds(fns, p).items()}
