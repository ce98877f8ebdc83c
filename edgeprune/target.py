"""Build targets: TOML files that bind a workload to a profile, a format and budgets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import tomllib

from edgeprune.errors import InputError

# Keys a target may hold: the flags of `edgeprune build`, with dashes or underscores.
TARGET_KEYS = {
    "model", "profile", "output", "strategy", "sparsity", "criterion", "nm", "recover",
    "quantize", "format", "device", "threads", "measure_here", "latency_budget_ms", "latency_stat",
    "max_size_mb", "max_memory_mb", "max_accuracy_drop", "estimate_margin",
}


def load_target(path: str | Path) -> dict[str, Any]:
    """Returns a target file's keys (underscored); model and output resolve against its folder."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"target file not found: {path}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"target {path}: not valid TOML: {exc}") from None
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in TARGET_KEYS:
            raise InputError(f"target {path}: unknown key {key!r} (keys are the flags of `edgeprune build`)")
        out[name] = value
    if "model" not in out:
        raise InputError(f"target {path}: field 'model' is missing (path/to/workload.py[:function])")
    base = path.parent
    out["model"] = _relative(base, str(out["model"]))
    if "output" in out:
        out["output"] = _relative(base, str(out["output"]))
    if "profile" in out and str(out["profile"]).endswith(".toml"):
        out["profile"] = _relative(base, str(out["profile"]))
    return out


def _relative(base: Path, spec: str) -> str:
    file, sep, func = spec.partition(":")
    resolved = file if Path(file).is_absolute() else str(base / file)
    return resolved + (sep + func if sep else "")
