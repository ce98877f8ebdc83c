"""The plan: what the build will do to the model for a device, and why."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from edgeprune.errors import InputError
from edgeprune.profile import Profile
from edgeprune.workload import Workload

STRATEGIES = ("auto", "none", "structured", "unstructured", "nm", "hybrid")
QUANTIZE = ("none", "fp16", "int8")


@dataclass(frozen=True)
class Plan:
    """Strategy, sparsity, quantization and format, with the reasons in plain words."""

    kind: str
    sparsity: float
    quantization: str
    format: str
    precision: str
    criterion: str | None = None
    nm: tuple[int, int] | None = None
    channel_multiple: int = 1
    reasons: tuple[str, ...] = ()
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["reasons"] = list(self.reasons)
        out["nm"] = f"{self.nm[0]}:{self.nm[1]}" if self.nm else None
        return out


def parse_nm(text: str) -> tuple[int, int]:
    """Returns (N, M) from 'N:M'; InputError unless 0 < N < M."""
    n, sep, m = str(text).partition(":")
    if not sep or not n.strip().isdigit() or not m.strip().isdigit():
        raise InputError(f"--nm must look like N:M (e.g. 2:4), got {text!r}")
    n_i, m_i = int(n), int(m)
    if not 0 < n_i < m_i:
        raise InputError(f"--nm {text}: N must be at least 1 and smaller than M")
    return n_i, m_i


def precision_for(quantize: str, fmt: str) -> str:
    """Returns the artifact precision a --quantize value means for a format."""
    if quantize == "none":
        # Core ML computes in fp16 by default; the others keep the model's fp32.
        return "fp16" if fmt == "coreml" else "fp32"
    return quantize


def resolve_format(fmt: str, profile: Profile) -> str:
    """Returns the concrete format: the profile's preferred runtime for 'auto'."""
    if fmt == "auto":
        return profile.preferred_format
    if fmt not in profile.formats:
        raise InputError(
            f"profile {profile.name} does not run format {fmt!r} (its formats: {', '.join(profile.formats)})"
        )
    return fmt


def make_plan(
    workload: Workload,
    profile: Profile,
    strategy: str = "auto",
    sparsity: float | None = None,
    quantize: str = "none",
    fmt: str = "auto",
    criterion: str | None = None,
    nm: str = "2:4",
) -> Plan:
    """Returns the plan for building a workload for a profile with the requested knobs."""
    if strategy not in STRATEGIES:
        raise InputError(f"unknown strategy {strategy!r}; strategies: {', '.join(STRATEGIES)}")
    if quantize not in QUANTIZE:
        raise InputError(f"unknown --quantize {quantize!r}; choose one of: {', '.join(QUANTIZE)}")
    if sparsity is not None and not 0.0 <= sparsity < 1.0:
        raise InputError(f"--sparsity must be in [0, 1), got {sparsity}")
    fmt = resolve_format(fmt, profile)
    reasons: list[str] = []
    kind = strategy
    if strategy == "auto":
        kind = "none"
        reasons.append("no pruning requested: --strategy auto with no budget to search leaves the model dense")
    if kind in ("structured", "unstructured", "hybrid") and sparsity is None:
        raise InputError(f"--strategy {kind} needs --sparsity S (the fraction to remove, in [0, 1))")
    nm_pair = parse_nm(nm) if kind == "nm" else None
    amount = 0.0 if kind == "none" else (1 - nm_pair[0] / nm_pair[1] if nm_pair else float(sparsity))
    return Plan(
        kind=kind, sparsity=amount, quantization=quantize, format=fmt,
        precision=precision_for(quantize, fmt), criterion=criterion, nm=nm_pair,
        channel_multiple=int(profile.channel_multiple.value), reasons=tuple(reasons),
    )
