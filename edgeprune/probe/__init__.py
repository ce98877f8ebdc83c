"""Probing this machine: measured peaks that make a valid profile of it."""

from __future__ import annotations

import platform
import re
import time

from edgeprune.errors import InputError
from edgeprune.host import RELEVANT_FLAGS, Host, memory_gb, this_host
from edgeprune.probe.bench import (
    GEMM_SIZES,
    UNCALIBRATED,
    busy_load,
    layer_overhead_us,
    memory_bandwidth_gbs,
    peak_gemm_tops,
)
from edgeprune.probe.calibrate import calibrate_efficiency
from edgeprune.probe.toml import write_profile

__all__ = ["busy_load", "calibrate_efficiency", "probe_host", "write_profile"]


def probe_host(name: str | None = None, seconds: float = 1.0, calibrate: bool = True,
               threads: int | None = None, host: Host | None = None) -> dict:
    """Returns profile data for this machine, every number measured here or read from the OS.

    With ``calibrate`` the estimator's efficiency factors are measured too (see
    ``calibrate_efficiency``); without, they are a rough 0.8 and say so. ``threads`` probes
    that many cores (all by default): a profile of the share of the machine a model gets.
    ``host``: the machine probed (this one; tests say it is a virtual machine or not).
    """
    host = host or this_host()
    threads = threads or host.cores
    today = time.strftime("%Y-%m-%d")
    where = f"measured by `edgeprune profiles probe` on {host.description}, {today}"
    compute: dict[str, dict] = {}
    for precision in ("fp32", "fp16", "int8"):
        tops = peak_gemm_tops(precision, seconds / 3 if precision != "fp32" else seconds, threads=threads)
        if tops:
            kernel = "MatMulInteger U8xS8" if precision == "int8" else f"MatMul {precision}"
            compute[precision] = {"dense_tops": round(tops, 5),
                                  "source": f"{where}: ONNX Runtime {kernel}, fastest run of square sizes "
                                            f"{', '.join(map(str, GEMM_SIZES))}"}
    flags = sorted(f for f in RELEVANT_FLAGS if f in host.flags)
    kernels = {p: c for p in ("fp32", "int8") if (c := host.kernel_class(p)) is not None}
    simd_lanes = 16 if "avx512f" in host.flags else 8 if "avx2" in host.flags else 4
    if name is not None and not re.fullmatch(r"[a-z0-9][a-z0-9._-]*", name):
        raise InputError(f"--name {name!r}: a profile name is lowercase letters, digits, '.', '_' and '-' "
                         "(it is also the file name)")
    hostname = re.sub(r"[^a-z0-9._-]+", "-", platform.node().lower()).strip("-") or "host"
    data = {
        "name": name or f"probed-{hostname}",
        "family": "x86" if host.is_x86 else "arm" if host.machine in ("aarch64", "arm64") else "custom",
        "description": f"this machine as probed: {host.description}"
                       + (f", using {threads} of its cores" if threads != host.cores else ""),
        "formats": ["onnx"],
        "precisions": [*compute, "int4"],  # int4 weights (MatMulNBits) compute in int8 on ONNX Runtime's CPU
        "int8_activation": "u8",  # ONNX Runtime's x86 int8 kernels: u8 x s8, residual adds fused only for u8
        "cores": threads,
        "cpu_flags": flags,
        "kernels": kernels,
        "channel_multiple": {"value": simd_lanes, "source": f"{where}: fp32 SIMD lanes of the widest vector unit"},
        "memory_bandwidth_gbs": {"value": round(memory_bandwidth_gbs(seconds), 2), "source": f"{where}: numpy copy of 256 MiB"},
        "memory_gb": {"value": memory_gb(), "source": f"{where}: /proc/meminfo MemTotal"},
        "compute": compute,
        "sparsity": {"source": "ONNX Runtime's CPU kernels are dense: unstructured and N:M zeros are computed like any other weight"},
        "efficiency": {
            "compute": 0.8, "bandwidth": 0.8, "layer_overhead_us": round(layer_overhead_us(seconds / 2, threads=threads), 2),
            "source": f"{where}: overhead from a chain of 64 tiny Add operators{UNCALIBRATED}",
        },
    }
    return calibrate_efficiency(data, seconds, threads, host=host) if calibrate else data
