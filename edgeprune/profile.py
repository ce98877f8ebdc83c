"""Hardware profiles: what a device can turn into speed, read from cited TOML files."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

import tomllib
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edgeprune.errors import InputError

Format = Literal["onnx", "coreml", "tensorrt"]
Precision = Literal["fp32", "fp16", "int8"]
PROFILE_PATH_ENV = "EDGEPRUNE_PROFILE_PATH"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Cited(_Strict):
    """A number and where it comes from (a datasheet, a measurement, or 'derived: ...')."""

    value: float = Field(gt=0)
    source: str = Field(min_length=3)


class PeakCompute(_Strict):
    """Peak throughput of one precision, in tera-operations per second (a MAC counts 2)."""

    dense_tops: float = Field(gt=0)
    sparse_tops: float | None = Field(default=None, gt=0)
    source: str = Field(min_length=3)


class NMSparsity(_Strict):
    """N:M sparsity the runtime turns into speed (sparse tensor cores)."""

    pattern: str = "2:4"
    min_channels: int = Field(ge=1, description="both input and output width of a layer must reach this")
    source: str = Field(min_length=3)

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, value: str) -> str:
        n, _, m = value.partition(":")
        if not (n.isdigit() and m.isdigit() and 0 < int(n) < int(m)):
            raise ValueError(f"must look like N:M with 0 < N < M, got {value!r}")
        return value


class UnstructuredSparsity(_Strict):
    """Unstructured sparsity the runtime turns into speed above a threshold."""

    min_sparsity: float = Field(gt=0, lt=1)
    source: str = Field(min_length=3)


class SparsitySupport(_Strict):
    """Which sparsity kinds become speed; structured always does (a smaller dense model)."""

    structured: Literal[True] = True
    nm: NMSparsity | None = None
    unstructured: UnstructuredSparsity | None = None
    source: str = Field(min_length=3, description="why the kinds left out give no speed")


class Efficiency(_Strict):
    """Fractions of the peaks a real runtime reaches; the roofline estimator uses them."""

    compute: float = Field(gt=0, le=1)
    bandwidth: float = Field(gt=0, le=1)
    layer_overhead_us: float = Field(ge=0)
    source: str = Field(min_length=3)


class Profile(_Strict):
    """One device: formats, precisions, exploitable sparsity, peaks and their sources."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    family: Literal["jetson", "apple", "x86", "nvidia-gpu", "arm", "custom"]
    description: str
    formats: list[Format] = Field(min_length=1, description="runtimes it runs; the first is preferred")
    precisions: list[Precision] = Field(min_length=1)
    int8_activation: Literal["u8", "s8"] = Field(
        "s8", description="activation type for int8: u8 on x86 without VNNI, s8 elsewhere"
    )
    min_deployment_target: str | None = Field(None, description="Core ML: e.g. iOS17")
    channel_multiple: Cited
    memory_bandwidth_gbs: Cited
    memory_gb: Cited
    cores: int | None = Field(None, ge=1, description="CPU cores (x86 and probed profiles)")
    cpu_flags: list[str] = Field(default_factory=list)
    compute: dict[Precision, PeakCompute]
    sparsity: SparsitySupport
    efficiency: Efficiency
    path: Path | None = Field(None, exclude=True)

    @model_validator(mode="after")
    def _consistent(self) -> Profile:
        missing = [p for p in self.precisions if p not in self.compute]
        if missing:
            raise ValueError(f"precisions {missing} have no [compute.{missing[0]}] table")
        if "coreml" in self.formats and not self.min_deployment_target:
            raise ValueError("a profile with the coreml format needs min_deployment_target")
        if self.sparsity.nm is not None and not any(c.sparse_tops for c in self.compute.values()):
            raise ValueError("sparsity.nm is set but no [compute.*] states sparse_tops")
        return self

    @property
    def preferred_format(self) -> str:
        return self.formats[0]

    def peak_tops(self, precision: str, sparse: bool = False) -> float:
        """Returns the peak TOPS for a precision (falling back to fp32's when not listed)."""
        peak = self.compute.get(precision) or self.compute.get("fp32") or next(iter(self.compute.values()))
        if sparse and peak.sparse_tops:
            return peak.sparse_tops
        return peak.dense_tops

    def to_dict(self) -> dict:
        return self.model_dump(mode="json", exclude_none=True)


def builtin_profile_dir() -> Path:
    """Returns the folder of the profiles that ship with edgeprune (wheel or source tree)."""
    packaged = Path(__file__).parent / "profiles"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "profiles"


def profile_dirs() -> list[Path]:
    """Returns the folders searched for profiles: EDGEPRUNE_PROFILE_PATH first, then built-ins."""
    extra = [Path(p) for p in os.environ.get(PROFILE_PATH_ENV, "").split(os.pathsep) if p]
    return [*extra, builtin_profile_dir()]


def load_profile_file(path: str | Path) -> Profile:
    """Returns the validated Profile in a TOML file; InputError names the file and the field."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"profile file not found: {path}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"profile {path}: not valid TOML: {exc}") from None
    return _validate(data, path)


def _validate(data: dict, path: Path) -> Profile:
    try:
        return Profile.model_validate({**data, "path": path})
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "missing":
            msg = "required field is missing"
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise InputError(f"profile {path}: field '{field}': {msg}{more}") from None


def available_profiles() -> dict[str, Path]:
    """Returns name -> file for every profile found, earlier folders winning."""
    found: dict[str, Path] = {}
    for folder in profile_dirs():
        if not folder.is_dir():
            continue
        for file in sorted(folder.glob("*.toml")):
            found.setdefault(file.stem, file)
    return found


def load_profile(name_or_path: str | Path) -> Profile:
    """Returns the profile named (searched in the registry) or at a path to a .toml file."""
    text = str(name_or_path)
    if text.endswith(".toml") or os.sep in text or Path(text).is_file():
        return load_profile_file(text)
    return _load_named(text, str(available_profiles().get(text, "")))


@lru_cache(maxsize=64)
def _load_named(name: str, file: str) -> Profile:
    if not file:
        known = ", ".join(sorted(available_profiles())) or "none"
        raise InputError(f"unknown profile {name!r}; known profiles: {known} (or give a path to a .toml file)")
    profile = load_profile_file(file)
    if profile.name != name:
        raise InputError(f"profile {file}: field 'name': is {profile.name!r} but the file is named {name}.toml")
    return profile
