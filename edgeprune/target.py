"""Build targets: everything a build takes, from keyword arguments, a target TOML file and CLI flags alike.

A target file binds a workload to a profile, a format and budgets; its keys are the flags
of ``edgeprune build`` (dashes or underscores).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tomllib

from edgeprune.errors import InputError
from edgeprune.gate import Budgets
from edgeprune.host import Host
from edgeprune.vocabulary import HF_PREFIX, LIBRARY_PREFIXES, MAX_CONTEXT, MAX_RECOVER_STEPS

if TYPE_CHECKING:
    from edgeprune.profile import Profile

# option keys that are budgets, and the Budgets field each fills
BUDGET_KEYS = {
    "latency_budget_ms": "latency_ms", "latency_stat": "latency_stat", "max_size_mb": "max_size_mb",
    "max_memory_mb": "max_memory_mb", "max_accuracy_drop": "max_accuracy_drop", "estimate_margin": "estimate_margin",
    "latency_budget_ratio": "latency_ratio", "max_slice_drop": "max_slice_drop",
    "min_decode_tokens_per_s": "min_decode_tokens_per_s", "min_prefill_tokens_per_s": "min_prefill_tokens_per_s",
    "max_ttft_ms": "max_ttft_ms",
}


@dataclass(frozen=True)
class BuildOptions:
    """Everything ``edgeprune build`` takes; each field but ``host`` is a CLI flag and a target-file key.

    ``host`` is the machine the build runs on (None: this one); the Python API and tests
    pass another to ask what a build would decide there.
    """

    model: str
    profile: str
    output: Path
    data: str | None = None
    strategy: str = "auto"
    sparsity: float | None = None
    criterion: str | None = None
    nm: str = "2:4"
    recover: int = 0
    quantize: str = "auto"
    format: str = "auto"
    device: str | None = None
    farm: str | None = None
    ray: str | None = None
    budgets: Budgets = field(default_factory=Budgets)
    threads: int | None = None
    palettize: int | None = None
    measure_here: bool = False
    mlflow: str | None = None
    prompt_tokens: int = 512
    generate_tokens: int = 128
    host: Host | None = None


OPTION_KEYS = frozenset(f.name for f in fields(BuildOptions)) - {"budgets", "host"}


def options_from(spec: str, given: dict[str, Any], default_output: Path | None = None) -> BuildOptions:
    """Returns BuildOptions from a model spec or target file (.toml) and keys that win over the target's.

    ``given`` holds option names (``format``, ``max_size_mb``, ...); None values are ignored.
    """
    keys: dict[str, Any] = load_target(spec) if str(spec).endswith(".toml") else {"model": str(spec)}
    keys.update({k: v for k, v in given.items() if v is not None})
    unknown = sorted(set(keys) - OPTION_KEYS - set(BUDGET_KEYS) - {"host"})
    if unknown:
        raise InputError(f"unknown build option {unknown[0]!r}")
    if not keys.get("profile"):
        raise InputError("no profile: give --profile NAME (see `edgeprune profiles list`) or a target file with profile")
    budgets = budgets_from(keys)
    plain = {k: v for k, v in keys.items() if k not in BUDGET_KEYS}
    plain["output"] = Path(plain.get("output") or default_output or Path("out") / _default_name(str(spec)))
    check_option_types(plain)
    return BuildOptions(**plain, budgets=budgets)


# the same rules for flags, target files and Python calls
TEXT_OPTIONS = ("model", "profile", "data", "strategy", "criterion", "nm", "quantize", "format", "device", "farm",
                "ray", "mlflow")


def check_option_types(options: dict[str, Any]) -> None:
    """Raises InputError naming the option for a value of the wrong type or out of range."""
    for name in TEXT_OPTIONS:
        value = options.get(name)
        if value is not None and not isinstance(value, str):
            raise InputError(f"{name.replace('_', '-')} must be text, got {value!r}")
    if options.get("sparsity") is not None:
        options["sparsity"] = number("sparsity", options["sparsity"])
        if not 0.0 <= options["sparsity"] < 1.0:
            raise InputError(f"--sparsity must be in [0, 1), got {options['sparsity']}")
    for name, low, high in (("recover", 0, MAX_RECOVER_STEPS), ("threads", 1, 4096), ("prompt_tokens", 1, MAX_CONTEXT),
                            ("generate_tokens", 1, MAX_CONTEXT)):
        value = options.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high):
            raise InputError(f"{name} must be a whole number from {low} to {high}, got {value!r}")
    if options.get("palettize") is not None and options["palettize"] not in (4, 6, 8) \
            or isinstance(options.get("palettize"), bool):
        raise InputError(f"palettize must be 4, 6 or 8 (bits), got {options['palettize']!r}")
    if not isinstance(options.get("measure_here", False), bool):
        raise InputError(f"measure-here must be true or false, got {options['measure_here']!r}")


def _default_name(spec: str) -> str:
    """Returns the default build folder's name: the workload file's stem, or a spec's model name."""
    if spec.startswith(HF_PREFIX):
        return Path(spec[len(HF_PREFIX):]).name or "model"
    if spec.startswith(LIBRARY_PREFIXES):
        return spec.split(":")[1] or "model"
    return Path(spec.split(":")[0]).stem


def budgets_from(keys: dict[str, Any]) -> Budgets:
    """Returns the Budgets that option keys (``latency_budget_ms``, ``max_size_mb``, ...) set."""
    return Budgets(**{dst: number(src, keys[src]) if src != "latency_stat" else keys[src]
                      for src, dst in BUDGET_KEYS.items() if keys.get(src) is not None})


def number(name: str, value: Any) -> float:
    """Returns ``value`` as a float; InputError naming the option for anything but a finite number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(f"{name.replace('_', '-')} must be a finite number, got {value!r}")
    return float(value)


def load_target(path: str | Path) -> dict[str, Any]:
    """Returns a target file's keys (underscored); model, output and data resolve against its folder."""
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
        if name not in OPTION_KEYS | set(BUDGET_KEYS):
            raise InputError(f"target {path}: unknown key {key!r} (keys are the flags of `edgeprune build`)")
        out[name] = value
    if "model" not in out:
        raise InputError(f"target {path}: field 'model' is missing (path/to/workload.py[:function])")
    base = path.parent
    for key in ("model", "output", "profile", "data", "farm"):
        if key in out and not isinstance(out[key], str):
            raise InputError(f"target {path}: {key} must be text (a path or a name), got {out[key]!r}")
    out["model"] = _relative(base, str(out["model"]))
    if "output" in out:
        out["output"] = _relative(base, str(out["output"]))
    if "profile" in out and str(out["profile"]).endswith(".toml"):
        out["profile"] = _relative(base, str(out["profile"]))
    for key in ("data", "farm"):
        if isinstance(out.get(key), str):
            out[key] = str(Path(out[key]) if Path(out[key]).is_absolute() else base / out[key])
    return out


def _relative(base: Path, spec: str) -> str:
    if spec.startswith(LIBRARY_PREFIXES):  # timm:NAME, torchvision:NAME: no path
        return spec
    if spec.startswith(HF_PREFIX):
        folder = spec[len(HF_PREFIX):]
        return HF_PREFIX + (folder if Path(folder).is_absolute() else str(base / folder))
    file, sep, func = spec.partition(":")
    resolved = file if Path(file).is_absolute() else str(base / file)
    return resolved + (sep + func if sep else "")


def check_measure_flags(profile: Profile, measure_here: bool = False, threads: int | None = None) -> None:
    """Raises InputError for --measure-here on a non-CPU profile or --threads beyond its cores."""
    if measure_here and (not profile.is_cpu or "onnx" not in profile.formats):
        raise InputError(f"--measure-here times a CPU profile on this CPU; {profile.name} is a {profile.family} "
                         "device: attach it with --device http://HOST:PORT (edgeprune agent serve)")
    if threads is not None and profile.cores is not None and threads > profile.cores:
        raise InputError(f"--threads {threads} is more than the {profile.cores} cores of profile {profile.name}")


def check_before_work(options: BuildOptions) -> str | None:
    """Runs the checks of a build's options that need no model, before anything heavy is imported or
    written: the output folder, the MLflow tracking URI, the profile, --measure-here and --threads for
    it, and the device's URL. Returns the tracking URI (None without --mlflow)."""
    from edgeprune.output import check_output_folder
    from edgeprune.profile import load_profile
    from edgeprune.report.mlflow_run import check_tracking

    check_output_folder(Path(options.output))
    tracking = check_tracking(options.mlflow) if options.mlflow is not None else None
    profile = load_profile(options.profile)
    check_measure_flags(profile, options.measure_here, options.threads)
    check_device_flags(profile.name, options.device, options.farm)
    return tracking


def check_device_flags(profile: str, device: str | None, farm: str | None) -> None:
    """Raises InputError for --device with --farm, a device URL that is not one, or a farm file that is
    unreadable, has no agent for the profile or whose tokens are not set (no agent is asked)."""
    from edgeprune.web import agent_url

    if device and farm:
        raise InputError("give --device (one agent) or --farm (a farm file), not both")
    if device:
        agent_url(device)
    if farm:
        from edgeprune.farm.file import agents_for, check_tokens, load_farm

        check_tokens(agents_for(load_farm(farm), profile, farm), farm)
