"""The report as data: one dataclass for every device family, with a schema version.

Sections that differ by where the figures came from (a measured or an estimated latency, a
numeric or a structural verification) stay mappings; ``schema.json`` says what each holds.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

SCHEMA_VERSION = 1


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
    latency: dict[str, Any]
    memory: dict[str, Any]
    accuracy: dict[str, Any]
    budgets: list[dict[str, Any]]
    passed: bool
    notes: list[str] = field(default_factory=list)
    search: dict[str, Any] | None = None
    layers: dict[str, Any] | None = None
    schema: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        """Returns the report as report.json holds it (the schema version first)."""
        out: dict[str, Any] = {"schema": self.schema}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "schema" or (f.name in ("search", "layers") and value is None):
                continue
            out[f.name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Report:
        """Returns the report a dict holds; the caller validates it against the schema first."""
        values = dict(data)
        values["model"] = ModelCounts(**values["model"])
        return cls(**values)
