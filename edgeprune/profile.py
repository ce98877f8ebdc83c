"""Hardware profiles: what a device can turn into speed, read from cited TOML files."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

import tomllib
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edgeprune.errors import InputError
from edgeprune.host import (
    FP32_CLASSES,
    FULL_RANGE_INT8,
    INT8_CLASSES,
    RELEVANT_FLAGS,
    Host,
    isa_of,
    kernel_class,
    memory_gb,
)
from edgeprune.precision import WEIGHT_ONLY, Precision

Format = Literal["onnx", "coreml", "tensorrt"]
# Profile families whose devices compute on CPU cores.
CPU_FAMILIES = ("x86", "arm", "custom")
PROFILE_PATH_ENV = "EDGEPRUNE_PROFILE_PATH"
HOST_PROFILE = "host"  # reserved: the profile derived from this machine (see host_profile)


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


# A convolution reading fewer input channels a tap than this is shallow (an image's first layer):
# ONNX Runtime's direct int8 convolution wants input channels in multiples of 4 (MLAS's
# symmetric "ConvSym" kernels); fewer go through im2col, a GEMM and a separate requantization.
SHALLOW_TAP_CHANNELS = 4


class Efficiency(_Strict):
    """Fractions of the peaks a real runtime reaches; the roofline estimator uses them."""

    def compute_for(self, precision: str) -> float:
        """Returns the fraction of a precision's peak reached: its own factor, else ``compute``."""
        return self.compute_by_precision.get(precision, self.compute)

    def bandwidth_for(self, precision: str) -> float:
        """Returns the fraction of the bandwidth reached streaming weights of a precision: its own factor, else ``bandwidth``."""
        return self.bandwidth_by_precision.get(precision, self.bandwidth)

    def overhead_us_for(self, precision: str) -> float:
        """Returns the fixed cost of one kernel of a precision, in microseconds."""
        return self.layer_overhead_us_by_precision.get(precision, self.layer_overhead_us)

    def shallow_conv_us(self, precision: str, tap_channels: int, window_rows: int, outputs: float,
                        out_channels: int) -> float:
        """Returns the extra time of a shallow convolution (fewer than SHALLOW_TAP_CHANNELS input
        channels a tap, like an image's first layer), in microseconds; 0 for any other kernel.

        outputs x ns per output + output pixels x window rows x ns per pixel and row, from
        ``shallow_conv_ns_by_precision``: the work such a kernel does beyond its arithmetic,
        which its FLOPs do not show: gathering, for every output pixel, each window row's
        few channels (a row of taps lies contiguous in channels-last memory), and writing
        and requantizing each output apart from the GEMM.
        """
        if not 0 < tap_channels < SHALLOW_TAP_CHANNELS or out_channels < 1:
            return 0.0
        per_output, per_row = self.shallow_conv_ns_by_precision.get(precision, (0.0, 0.0))
        return (outputs * per_output + outputs / out_channels * window_rows * per_row) * 1e-3

    def elementwise_us(self, precision: str, elements: float) -> float:
        """Returns the time of a kernel between layers (elementwise, normalization, softmax, transpose)
        over ``elements`` elements beyond its memory traffic, in microseconds."""
        return elements * self.elementwise_ns_by_precision.get(precision, 0.0) * 1e-3

    def conv_output_us(self, precision: str, outputs: float) -> float:
        """Returns what a one-group convolution writing ``outputs`` elements costs beyond its FLOPs, in microseconds."""
        return outputs * self.conv_output_ns_by_precision.get(precision, 0.0) * 1e-3

    def depthwise_us(self, precision: str, outputs: float, channels: float = 0.0) -> float:
        """Returns the extra time of a depthwise convolution writing ``outputs`` elements in ``channels`` planes, in us."""
        return (outputs * self.depthwise_ns_by_precision.get(precision, 0.0) + channels * self.depthwise_channel_ns_by_precision.get(precision, 0.0)) * 1e-3

    compute: float = Field(gt=0, le=1)
    compute_by_precision: dict[Precision, Annotated[float, Field(gt=0, le=1)]] = Field(
        default_factory=dict, description="per-precision fractions of peak where they differ from compute")
    bandwidth: float = Field(gt=0, le=1)
    bandwidth_by_precision: dict[Precision, Annotated[float, Field(gt=0, le=1)]] = Field(
        default_factory=dict, description="fraction of the bandwidth a batch-1 product of weights stored at a "
                                          "precision streams them at, where it differs from bandwidth (int4 blocks)")
    attention: dict[Literal["decode", "prompt"], Annotated[float, Field(gt=0, le=1)]] = Field(
        default_factory=dict, description="fraction of the fp32 peak a decoder's attention reaches, decoding one "
                                          "token over its cache and over a prompt; absent: compute")
    layer_overhead_us: float = Field(ge=0)
    layer_overhead_us_by_precision: dict[Precision, Annotated[float, Field(ge=0)]] = Field(
        default_factory=dict, description="per-kernel overhead of a precision's kernels where it differs")
    shallow_conv_ns_by_precision: dict[Precision, tuple[Annotated[float, Field(ge=0)], Annotated[float, Field(ge=0)]]] = (
        Field(default_factory=dict,
              description="[ns per output element, ns per output pixel and window row] that a convolution "
                          "reading fewer than 4 input channels a tap costs beyond its FLOPs; absent: nothing"))
    conv_output_ns_by_precision: dict[Precision, Annotated[float, Field(ge=0)]] = Field(
        default_factory=dict, description="ns per output element a one-group convolution costs beyond its FLOPs "
                                          "(the accumulator set up, biased, activated and stored: what makes a "
                                          "convolution over few channels, a mobile network's 1x1, slower than its "
                                          "FLOPs); absent: nothing")
    depthwise_ns_by_precision: dict[Precision, Annotated[float, Field(ge=0)]] = Field(
        default_factory=dict, description="ns per output element a depthwise convolution costs beyond its FLOPs "
                                          "(its few operations an output hide the loads and stores); absent: nothing")
    depthwise_channel_ns_by_precision: dict[Precision, Annotated[float, Field(ge=0)]] = Field(default_factory=dict, description="ns per channel plane a depthwise convolution costs on top (small maps cost more per output)")
    elementwise_ns_by_precision: dict[Precision, Annotated[float, Field(ge=0)]] = Field(
        default_factory=dict, description="ns per element an operator between layers (an elementwise chain, a "
                                          "normalization, a softmax, a transpose) takes in the runtime, where that "
                                          "is more than its memory traffic; absent: nothing")
    stall_us: float | None = Field(default=None, ge=0, le=1e6, description="how much longer than when fastest a kernel split over the threads took at times while probed (us; on a VM at worst as on one thread): the gate pads an estimate by it per kernel, up to the swing; absent: the swing alone")
    swing: float = Field(default=1.0, ge=1, le=100, description="how much slower than when fastest the probe's shortest kernels ran (1 + their rounds' spread; on a VM at least one thread's time over all threads'): the gate pads estimates by it; absent: 1")
    source: str = Field(min_length=3)


class Profile(_Strict):
    """One device: formats, precisions, exploitable sparsity, peaks and their sources."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    family: Literal["jetson", "apple", "x86", "nvidia-gpu", "arm", "custom"]
    description: str
    formats: list[Format] = Field(min_length=1, description="runtimes it runs; the first is preferred")
    precisions: list[Precision] = Field(min_length=1)
    int8_activation: Literal["u8", "s8"] = Field(
        "s8", description="activation type for int8: u8 on x86 (ONNX Runtime's u8 x s8 kernels; it fuses residual "
                          "adds into int8 only for u8), s8 elsewhere"
    )
    min_deployment_target: str | None = Field(None, description="Core ML: e.g. iOS17")
    channel_multiple: Cited
    memory_bandwidth_gbs: Cited
    memory_gb: Cited
    cores: int | None = Field(None, ge=1, description="CPU cores (x86 and probed profiles)")
    cpu_flags: list[str] = Field(default_factory=list)
    kernels: dict[Precision, str] = Field(
        default_factory=dict, description="ONNX Runtime CPU kernel class per precision; derived from cpu_flags if absent"
    )
    compute: dict[Precision, PeakCompute]
    sparsity: SparsitySupport
    efficiency: Efficiency
    path: Path | None = Field(None, exclude=True)

    @model_validator(mode="after")
    def _consistent(self) -> Profile:
        # a weight-only precision (int4) computes in a wider one: it needs no peak of its own
        missing = [p for p in self.precisions if p not in self.compute and p not in WEIGHT_ONLY]
        if missing:
            raise ValueError(f"precisions {missing} have no [compute.{missing[0]}] table")
        if "coreml" in self.formats and not self.min_deployment_target:
            raise ValueError("a profile with the coreml format needs min_deployment_target")
        if self.sparsity.nm is not None and not any(c.sparse_tops for c in self.compute.values()):
            raise ValueError("sparsity.nm is set but no [compute.*] states sparse_tops")
        for precision, stated in self.kernels.items():
            known = INT8_CLASSES if precision == "int8" else FP32_CLASSES
            if stated not in known:
                raise ValueError(f"kernels.{precision} is {stated!r}; known classes: {', '.join(known)}")
            derived = self._derived_kernel_class(precision)
            if self.cpu_flags and derived != stated:
                raise ValueError(f"kernels.{precision} is {stated!r} but cpu_flags select {derived!r}")
        return self

    @property
    def is_cpu(self) -> bool:
        """Whether the device computes on CPU cores (ONNX Runtime's CPU kernels), not on a GPU or an NPU."""
        return self.family in CPU_FAMILIES

    @property
    def isa(self) -> str | None:
        """Returns "x86" or "arm" for a CPU profile, from its family or its flags."""
        if self.family == "x86":
            return "x86"
        if self.family == "arm":
            return "arm"
        return isa_of(self.cpu_flags)

    def _derived_kernel_class(self, precision: str) -> str | None:
        return kernel_class(self.cpu_flags, precision, self.isa)

    def kernel_class(self, precision: str) -> str | None:
        """Returns the class of ONNX Runtime CPU kernels the device runs for a precision.

        Stated in ``kernels`` or derived from ``cpu_flags``; None where the profile says neither.
        """
        key = "fp32" if precision == "fp16" and "fp16" not in self.kernels else precision
        return self.kernels.get(key) or self._derived_kernel_class(precision)

    @property
    def int8_full_range(self) -> bool:
        """Returns whether full-range int8 weights are safe on the device (no 16-bit saturation)."""
        if self.isa != "x86":
            return True
        return self.kernel_class("int8") in FULL_RANGE_INT8

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
    except IsADirectoryError:
        raise InputError(f"profile {path} is a folder, not a .toml file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"profile {path}: not valid TOML: {str(exc).splitlines()[0]}") from None
    except OSError as exc:
        raise InputError(f"cannot read profile {path}: {exc.strerror or exc}") from None
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
    """Returns the profile named (searched in the registry) or at a path to a .toml file.

    ``host`` is this machine's own profile (``host_profile``).
    """
    text = str(name_or_path)
    if text == HOST_PROFILE:
        from edgeprune.host import this_host

        return host_profile(this_host())
    if text.endswith(".toml") or os.sep in text or Path(text).exists():
        profile = load_profile_file(text)
        if profile.name != Path(text).stem:
            raise InputError(f"profile {text}: its name {profile.name!r} must match its file name {Path(text).stem!r}")
        return profile
    return _load_named(text, str(available_profiles().get(text, "")))


# fp32 FLOP per cycle per core, and int8 operations per fp32 FLOP, by kernel class
# (Intel and Arm optimization manuals: two FMA units; VNNI/AMX per-core int8 rates)
_FP32_FLOP_PER_CYCLE = {"sse": 16, "avx2": 32, "avx512": 64, "neon": 16}
_INT8_PER_FP32 = {"sse": 2, "avx2": 2, "avx512-core": 2, "avx-vnni": 4, "avx512-vnni": 4, "amx": 32,
                  "neon": 2, "neon-dot": 4, "neon-i8mm": 8}
_ASSUMED_GHZ = 2.5


@lru_cache(maxsize=8)
def host_profile(host: Host) -> Profile:
    """Returns the profile of a machine, derived from its CPU flags, cores and OS figures.

    This machine is then its own device: its kernels are the profile's by construction, so a
    build for ``--profile host`` is measured here. The peaks are derived from the kernel
    classes and the clock the OS reports (not measured); ``edgeprune profiles probe`` writes
    a measured profile of the same machine.
    """
    isa = host.isa
    fp32, int8 = host.kernel_class("fp32"), host.kernel_class("int8")
    ghz = (host.mhz or 0) / 1000 or _ASSUMED_GHZ
    clock = (f"{ghz:.2f} GHz (cpu MHz in /proc/cpuinfo)" if host.mhz else f"{_ASSUMED_GHZ} GHz (assumed: the OS "
             "reports no clock)")
    flop = _FP32_FLOP_PER_CYCLE.get(fp32 or "", 8)
    fp32_tops = flop * ghz * host.cores / 1000
    int8_tops = fp32_tops * _INT8_PER_FP32.get(int8 or "", 1)
    derived = f"derived from this machine's CPU flags: {fp32} fp32 kernels, {flop} FLOP/cycle/core x {clock} x {host.cores} cores"
    flags = sorted(f for f in RELEVANT_FLAGS if f in host.flags)
    family = {"x86": "x86", "arm": "arm"}.get(isa or "", "custom")
    data = {
        "name": HOST_PROFILE,
        "family": family,
        "description": f"this machine: {host.description}, ONNX Runtime; derived from its CPU flags "
                       "(`edgeprune profiles probe` measures it)",
        "formats": ["onnx"],
        "precisions": ["fp32", "fp16", "int8", "int4"],
        "int8_activation": "u8",  # ONNX Runtime's x86 kernels: u8 x s8, residual adds fused only for u8
        "cores": host.cores,
        "cpu_flags": flags,
        "channel_multiple": {"value": 16 if fp32 == "avx512" else 8 if fp32 == "avx2" else 4,
                             "source": f"derived: fp32 lanes of one {fp32} vector register"},
        "memory_bandwidth_gbs": {"value": 20.0, "source": "assumed: a conservative share of one socket's DRAM "
                                                          "bandwidth; `edgeprune profiles probe` measures it"},
        "memory_gb": {"value": memory_gb(), "source": "read from the OS (/proc/meminfo MemTotal)"},
        "compute": {
            "fp32": {"dense_tops": round(fp32_tops, 4), "source": derived},
            "fp16": {"dense_tops": round(fp32_tops, 4), "source": derived + "; fp16 runs on the fp32 kernels"},
            "int8": {"dense_tops": round(int8_tops, 4),
                     "source": f"derived: {int8} int8 kernels, {_INT8_PER_FP32.get(int8 or '', 1)}x the fp32 rate"},
        },
        "sparsity": {"source": "ONNX Runtime's CPU kernels are dense: unstructured and N:M zeros are computed like "
                               "any other weight"},
        "efficiency": {"compute": 0.5, "bandwidth": 0.6, "layer_overhead_us": 8,
                       "source": "assumed: about half the FMA peak on batch-1 convolutions; run `edgeprune profiles "
                                 "probe` to calibrate"},
    }
    return Profile.model_validate(data)



@lru_cache(maxsize=64)
def _load_named(name: str, file: str) -> Profile:
    if not file:
        known = ", ".join(sorted(available_profiles())) or "none"
        raise InputError(f"unknown profile {name!r}; known profiles: {known} (or give a path to a .toml file)")
    profile = load_profile_file(file)
    if profile.name != name:
        raise InputError(f"profile {file}: field 'name': is {profile.name!r} but the file is named {name}.toml")
    return profile
