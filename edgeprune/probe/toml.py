"""Writing a probed profile as TOML, checked to load before it replaces anything."""

from __future__ import annotations

from pathlib import Path

from edgeprune.profile import load_profile_file


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(type(value))


def render_toml(data: dict) -> str:
    """Returns profile data as TOML (top-level scalars first, then one table per section)."""
    lines = ["# Written by `edgeprune profiles probe`; every number was measured on this machine.", ""]
    tables = {k: v for k, v in data.items() if k in ("compute", "sparsity", "efficiency")}
    for key, value in data.items():
        if key not in tables:
            lines.append(f"{key} = {_toml_value(value)}")
    for precision, peak in tables["compute"].items():
        lines += ["", f"[compute.{precision}]", *[f"{k} = {_toml_value(v)}" for k, v in peak.items()]]
    for section in ("sparsity", "efficiency"):
        lines += ["", f"[{section}]", *[f"{k} = {_toml_value(v)}" for k, v in tables[section].items()]]
    return "\n".join(lines) + "\n"


def write_profile(data: dict, path: str | Path) -> Path:
    """Returns the path after writing the profile and checking it loads as a valid profile."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(render_toml(data))
    try:
        load_profile_file(tmp)
    except Exception:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(path)
    return path
