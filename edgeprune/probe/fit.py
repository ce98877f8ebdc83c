"""Fitting the estimator's terms to timed calibration graphs: each solves or least-squares one term given the rest."""

from __future__ import annotations

import numpy as np

from edgeprune.measure.graph import ANCHORS
from edgeprune.profile import SHALLOW_TAP_CHANNELS


def estimate_with(graph, profile_data: dict):
    from edgeprune.measure.estimate import estimate_graph
    from edgeprune.profile import Profile

    return estimate_graph(graph, Profile.model_validate(profile_data))


def solve_efficiency(graph, profile_data: dict, measured_ms: float, field: str) -> float:
    """Returns the efficiency factor that makes the roofline estimate equal a measurement.

    The estimate falls as the factor rises, so bisection finds it; it is clamped to
    (0.01, 1] because a measurement faster than the peak means the peak was measured low.
    """
    def estimate(factor: float) -> float:
        return estimate_with(graph, {**profile_data, "efficiency": {**profile_data["efficiency"], field: factor}}).ms

    lo, hi = 0.01, 1.0
    if estimate(hi) >= measured_ms:
        return hi
    if estimate(lo) <= measured_ms:
        return lo
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if estimate(mid) > measured_ms else (lo, mid)
    return round((lo + hi) / 2, 4)


def fit_per_element(timed: list[tuple], data: dict, elements, chosen=lambda k: k.op in ANCHORS) -> float:
    """Returns the ns per element the chosen kernels of the timed graphs take beyond their estimate without
    that cost: least squares over the graphs, never negative. ``timed``: (graph, the milliseconds ONNX
    Runtime's profiler saw those kernels take); ``elements(kernel)`` counts a kernel's elements."""
    counts = np.array([sum(elements(k) for k in graph.kernels if chosen(k)) for graph, _ in timed], float)
    excess = np.array([max(0.0, ms - kernels_ms(graph, data, chosen)) * 1e6 for graph, ms in timed])
    return round(float(max(0.0, counts @ excess / (counts @ counts))) if counts.any() else 0.0, 4)


def kernels_ms(graph, data: dict, chosen=lambda k: k.op in ANCHORS) -> float:
    """Returns the estimated milliseconds of a graph's chosen kernels (its products, by default)."""
    return sum(t.ms for k, t in zip(graph.kernels, estimate_with(graph, data).kernels, strict=True) if chosen(k))


def fit_shallow(stems: list[tuple], data: dict) -> list[float]:
    """Returns [ns per output, ns per pixel and window row] of shallow convolutions, from timed stems (their
    convolutions' share of the run in ONNX Runtime's profiler, with the layout change before them)."""
    def terms(graph) -> list[float]:
        shallow = [k for k in graph.kernels if 0 < k.tap_channels < SHALLOW_TAP_CHANNELS]
        return [sum(k.output_elements for k in shallow),
                sum(k.output_elements / k.out_channels * k.window_rows for k in shallow)]
    return fit_two_terms(stems, data, terms)


def fit_depthwise(chains: list[tuple], data: dict) -> list[float]:
    """Returns [ns per output, ns per channel plane] of depthwise convolutions, from timed chains."""
    return fit_two_terms(chains, data, lambda g: [sum(k.depthwise_outputs for k in g.kernels), sum(k.depthwise_channels for k in g.kernels)])


def fit_two_terms(timed: list[tuple], data: dict, terms) -> list[float]:
    """Returns two costs in ns per unit of ``terms(graph)`` explaining what each timed graph's products took beyond
    their estimate without them: least squares of the relative residuals (a short graph counts as much as a long
    one), neither cost negative."""
    a = np.array([terms(graph) for graph, _ in timed], float)
    b = np.array([max(0.0, ms - kernels_ms(graph, data)) * 1e6 for graph, ms in timed])  # ns
    weight = 1 / np.array([max(ms * 1e6, 1e-9) for _, ms in timed])
    return [round(float(v), 4) for v in nonnegative_fit(a * weight[:, None], b * weight)]


def nonnegative_fit(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Returns x >= 0 minimizing |a x - b| for a two-column ``a``: the unconstrained solution where it is
    non-negative, else whichever one-term fit (the other term zero) leaves the smaller residual."""
    if len(b) > 1:
        fit = np.linalg.lstsq(a, b, rcond=None)[0]
        if (fit >= 0).all():
            return fit
    best = np.zeros(2)
    for col in (0, 1):
        one = np.zeros(2)
        one[col] = max(0.0, float(a[:, col] @ b / max(a[:, col] @ a[:, col], 1e-30)))
        if np.linalg.norm(a @ one - b) < np.linalg.norm(a @ best - b):
            best = one
    return best
