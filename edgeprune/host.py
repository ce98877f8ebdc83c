"""This machine: CPU model, cores and instruction-set flags, read from the OS."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

# The flags that decide which kernels ONNX Runtime uses for fp32 and int8.
RELEVANT_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "f16c", "neon", "asimddp")


@dataclass(frozen=True)
class Host:
    """The machine edgeprune runs on."""

    cpu: str
    machine: str
    cores: int
    flags: frozenset[str]

    @property
    def description(self) -> str:
        return f"{self.cpu} ({self.cores} cores, {platform.system()} {self.machine})"

    @property
    def is_x86(self) -> bool:
        return self.machine in ("x86_64", "AMD64", "i686")


@lru_cache(maxsize=1)
def this_host() -> Host:
    """Returns a description of the machine this process runs on."""
    cpu, flags = _cpuinfo()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return Host(cpu=cpu or platform.processor() or platform.machine(), machine=platform.machine(),
                cores=cores, flags=frozenset(flags))


def _cpuinfo() -> tuple[str, set[str]]:
    info = Path("/proc/cpuinfo")
    if not info.exists():
        return "", set()
    cpu, flags = "", set()
    for line in info.read_text(errors="replace").splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not cpu:
            cpu = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
    return cpu, flags
