"""This machine: CPU model, cores and instruction-set flags, and the kernel classes they select."""

from __future__ import annotations

import os
import platform
from collections.abc import Collection
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

# The flags that decide which kernels ONNX Runtime uses for fp32 and int8.
RELEVANT_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_tile", "amx_int8",
                  "f16c", "neon", "asimd", "asimddp", "i8mm")

# What picks ONNX Runtime's (MLAS's) CPU kernels is a small set of classes, not the whole flag
# list: the fp32 GEMM/conv kernel by vector width, and the int8 GEMM kernel by whether the CPU
# has a saturation-free int8 dot product (VNNI) or tiles (AMX). Two CPUs of one class run the
# same code; two of different classes do not, and their speed-ups differ (int8 without VNNI
# is about 2x fp32, with VNNI about 4x, with AMX far more on large GEMMs).
FP32_CLASSES = ("sse", "avx2", "avx512", "neon")
INT8_CLASSES = ("sse", "avx2", "avx512-core", "avx-vnni", "avx512-vnni", "amx", "neon", "neon-dot", "neon-i8mm")
# int8 classes whose kernels do not saturate full-range 8-bit products (x86 without VNNI sums
# U8xS8 pairs in 16 bits with vpmaddubsw and needs 7-bit weights, "reduce_range").
FULL_RANGE_INT8 = frozenset({"avx-vnni", "avx512-vnni", "amx", "neon", "neon-dot", "neon-i8mm"})
X86_MARKERS = frozenset({"sse2", "sse4_2", "avx", "avx2", "avx512f"})
ARM_MARKERS = frozenset({"neon", "asimd"})


def isa_of(flags: Collection[str], machine: str = "") -> str | None:
    """Returns "x86" or "arm" for a machine name or, failing that, its flags; None if neither."""
    if machine in ("x86_64", "AMD64", "i686"):
        return "x86"
    if machine in ("aarch64", "arm64"):
        return "arm"
    flags = set(flags)
    if flags & X86_MARKERS:
        return "x86"
    if flags & ARM_MARKERS:
        return "arm"
    return None


def kernel_class(flags: Collection[str], precision: str, isa: str | None) -> str | None:
    """Returns the class of ONNX Runtime CPU kernels these flags select for a precision.

    fp16 runs on the fp32 kernels on these CPUs (ONNX Runtime casts around the operators it
    has no fp16 kernel for). None where the flags do not say (no flags, or another ISA).
    """
    flags = set(flags)
    if isa == "x86":
        if precision == "int8":
            if {"amx_tile", "amx_int8"} <= flags:
                return "amx"
            if "avx512_vnni" in flags:
                return "avx512-vnni"
            if "avx_vnni" in flags:
                return "avx-vnni"
            if "avx512bw" in flags:
                return "avx512-core"
            if "avx512f" in flags:  # AVX-512 without BW has no byte arithmetic: the AVX2 int8 kernels run
                return "avx2"
            return "avx2" if "avx2" in flags else ("sse" if flags else None)
        if "avx512f" in flags:
            return "avx512"
        if {"avx2", "fma"} <= flags:
            return "avx2"
        return "sse" if flags else None
    if isa == "arm":
        if precision == "int8":
            return "neon-i8mm" if "i8mm" in flags else "neon-dot" if "asimddp" in flags else "neon"
        return "neon"
    return None


@dataclass(frozen=True)
class Host:
    """The machine edgeprune runs on (tests and remote descriptions build their own)."""

    cpu: str
    machine: str
    cores: int
    flags: frozenset[str]
    system: str = platform.system()
    mhz: float | None = None

    @property
    def description(self) -> str:
        return f"{self.cpu} ({self.cores} cores, {self.system} {self.machine})"

    @property
    def virtual(self) -> bool:
        """Whether this is a virtual machine (its CPU flags name a hypervisor): its cores may at times not run."""
        return "hypervisor" in self.flags

    @property
    def is_x86(self) -> bool:
        return self.isa == "x86"

    @property
    def isa(self) -> str | None:
        return isa_of(self.flags, self.machine)

    def kernel_class(self, precision: str) -> str | None:
        """Returns the class of ONNX Runtime kernels this machine runs for a precision."""
        return kernel_class(self.flags, precision, self.isa)

    @property
    def int8_full_range(self) -> bool:
        """Returns whether this machine's int8 kernels take full-range weights without saturating."""
        return not self.is_x86 or self.kernel_class("int8") in FULL_RANGE_INT8


@lru_cache(maxsize=1)
def this_host() -> Host:
    """Returns a description of the machine this process runs on."""
    cpu, flags, mhz = _cpuinfo()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return Host(cpu=cpu or platform.processor() or platform.machine(), machine=platform.machine(),
                cores=cores, flags=frozenset(flags), mhz=mhz)


def _cpuinfo() -> tuple[str, set[str], float | None]:
    info = Path("/proc/cpuinfo")
    if not info.exists():
        return "", set(), None
    cpu, flags, mhz = "", set(), None
    for line in info.read_text(errors="replace").splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not cpu:
            cpu = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
        elif key == "cpu MHz" and mhz is None:
            try:
                mhz = float(value)
            except ValueError:
                pass
    return cpu, flags, mhz


def memory_gb() -> float:
    """Returns this machine's memory in GB as the OS reports it (1.0 where it does not)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024**2, 1)
    except (OSError, ValueError, IndexError):
        pass
    return 1.0
