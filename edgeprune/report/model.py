"""The report as data: one dataclass for every device family, with a schema version.

The measurements are types (edgeprune.measurements); ``to_dict``/``from_dict`` are the one
place they become report.json's data and back. Sections that describe rather than measure
(the strategy, the artifact, the search, the per-layer profile) stay mappings;
``schema.json`` says what each holds.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from edgeprune.measurements import (
    Accuracy,
    BudgetResult,
    Generation,
    Latency,
    Measurements,
    Memory,
    plain,
)

SCHEMA_VERSION = 2
# versions this edgeprune reads: 1 is 2 without generation and int4
READABLE_SCHEMAS = (1, 2)


@dataclass(frozen=True)
class ModelCounts:
    """Parameters and MACs before and after pruning."""

    params_before: int
    params_after: int
    nonzero_params_after: int
    macs_before: int
    macs_after: int


@dataclass
class Report:
    """What a build did, what it measured and whether it passed; written as report.json and report.md."""

    edgeprune_version: str
    created: str
    workload: str
    profile: str
    strategy: dict[str, Any]
    model: ModelCounts
    artifact: dict[str, Any]
    latency: Latency
    memory: Memory
    accuracy: Accuracy
    budgets: list[BudgetResult]
    passed: bool
    notes: list[str] = field(default_factory=list)
    search: dict[str, Any] | None = None
    layers: dict[str, Any] | None = None
    generation: Generation | None = None
    schema: int = SCHEMA_VERSION

    def measurements(self) -> Measurements:
        """Returns what the report measured, as the gate judges it (``edgeprune check`` re-gates these)."""
        return Measurements(self.latency, self.artifact.get("size_bytes"), self.memory, self.accuracy,
                            self.generation)

    @property
    def verified(self) -> bool:
        return bool(self.artifact.get("verified", {}).get("passed"))

    def to_dict(self) -> dict[str, Any]:
        """Returns the report as report.json holds it (the schema version first)."""
        out: dict[str, Any] = {"schema": self.schema}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "schema" or (f.name in ("search", "layers", "generation") and value is None):
                continue
            out[f.name] = plain(value)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Report:
        """Returns the report a dict holds; the caller validates it against the schema first."""
        values = dict(data)
        values["model"] = ModelCounts(**values["model"])
        values["latency"] = Latency.from_dict(values["latency"])
        values["memory"] = Memory.from_dict(values["memory"])
        values["accuracy"] = Accuracy.from_dict(values["accuracy"])
        values["budgets"] = [BudgetResult.from_dict(b) for b in values["budgets"]]
        if values.get("generation") is not None:
            values["generation"] = Generation.from_dict(values["generation"])
        return cls(**values)
