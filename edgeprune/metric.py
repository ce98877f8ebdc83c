"""What ``evaluate()`` returns: a headline metric, optionally with per-slice values, checked and compared.

``evaluate(predict)`` may return one number, or a mapping of slice name -> number (per class,
per language, per user group). The key ``"overall"`` of a mapping is the headline metric and
not a slice; without it, the headline is the mean of the slices. Pruning does not hurt every
input alike, so each slice's drop is reported and can be gated on its own.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from edgeprune.errors import InputError
from edgeprune.measurements import SliceDrop

OVERALL = "overall"
GIVEN = "given"
MEAN_OF_SLICES = "mean of slices"


@dataclass(frozen=True)
class Score:
    """A metric as ``evaluate()`` gave it: the headline ``value`` and the slices (empty for a plain number).

    ``overall`` says where the headline came from: ``"given"`` (the mapping's "overall" key),
    ``"mean of slices"``, or None when evaluate returned a plain number.
    """

    value: float
    slices: dict[str, float] = field(default_factory=dict)
    overall: str | None = None


def finite_metric(value: Any, what: str) -> float:
    """Returns a metric as a float; InputError for anything but a finite real number."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not hasattr(value, "__float__"):
        raise InputError(f"{what} must return a number, got {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number):
        raise InputError(f"{what} returned {number}: the metric must be a finite number")
    return number


def score_of(value: Any, what: str) -> Score:
    """Returns what an evaluate() returned as a Score; InputError (one line) for anything else.

    A number is the headline; a mapping must be non-empty, keyed by non-empty strings, with a
    finite number for every key.
    """
    if not isinstance(value, Mapping):
        return Score(finite_metric(value, what))
    if not value:
        raise InputError(f"{what} returned an empty mapping: give a number or slice name -> number")
    slices: dict[str, float] = {}
    for key, number in value.items():
        if not isinstance(key, str) or not key.strip():
            raise InputError(f"{what} returned a slice key {key!r}: slice names must be non-empty text")
        try:
            slices[key] = finite_metric(number, f"{what}[{key!r}]")
        except InputError as exc:
            raise InputError(str(exc).replace("must return", "must be")) from None
    if OVERALL in slices:
        return Score(slices.pop(OVERALL), slices, GIVEN)
    return Score(sum(slices.values()) / len(slices), slices, MEAN_OF_SLICES)


def drop(baseline: float, value: float, higher_is_better: bool) -> float:
    """Returns how much worse ``value`` is than ``baseline`` (positive means worse), in the metric's own units."""
    return baseline - value if higher_is_better else value - baseline


def slice_section(baseline: Score, value: Score, higher_is_better: bool, what: str) -> dict:
    """Returns the Accuracy fields of the slices: ``slices`` (each a SliceDrop), ``worst_slice``, ``overall``.

    Empty when evaluate returned plain numbers. InputError when the two scores name
    different slices (an evaluate whose slices change between calls cannot be compared).
    """
    out: dict[str, Any] = {}
    if value.overall is not None:
        out["overall"] = value.overall
    if not baseline.slices and not value.slices:
        return out
    if list(baseline.slices) != list(value.slices):
        missing = sorted(set(baseline.slices) ^ set(value.slices)) or ["(their order)"]
        raise InputError(f"{what} returned different slices for the dense model and the built one "
                         f"(they differ in {', '.join(map(repr, missing[:3]))}): return the same slices every call")
    rows = tuple(SliceDrop(name, base, value.slices[name], round(drop(base, value.slices[name], higher_is_better), 6))
                 for name, base in baseline.slices.items())
    out["slices"] = rows
    out["worst_slice"] = max(rows, key=lambda r: r.drop).name  # the first of equals
    return out
