"""Probing this machine: measured peaks that make a valid profile of it."""

from __future__ import annotations

import platform
import re
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from edgeprune.backends import onnx_runtime
from edgeprune.host import RELEVANT_FLAGS, this_host
from edgeprune.profile import load_profile_file


def _gemm_model(n: int, precision: str) -> onnx.ModelProto:
    if precision == "int8":
        # U8 activations x S8 weights: the int8 path ONNX Runtime takes on x86 CPUs.
        a = helper.make_tensor_value_info("a", TensorProto.UINT8, [n, n])
        b = helper.make_tensor("b", TensorProto.INT8, [n, n], np.random.default_rng(0).integers(-64, 64, (n, n), dtype=np.int8).tobytes(), raw=True)
        y = helper.make_tensor_value_info("y", TensorProto.INT32, [n, n])
        node = helper.make_node("MatMulInteger", ["a", "b"], ["y"])
    else:
        dtype = TensorProto.FLOAT16 if precision == "fp16" else TensorProto.FLOAT
        npdt = np.float16 if precision == "fp16" else np.float32
        a = helper.make_tensor_value_info("a", dtype, [n, n])
        b = helper.make_tensor("b", dtype, [n, n], np.random.default_rng(0).standard_normal((n, n)).astype(npdt).tobytes(), raw=True)
        y = helper.make_tensor_value_info("y", dtype, [n, n])
        node = helper.make_node("MatMul", ["a", "b"], ["y"])
    graph = helper.make_graph([node], "gemm", [a], [y], [b])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _time(fn, seconds: float) -> float:
    fn()
    times = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 3:
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def gemm_tops(precision: str, seconds: float, n: int = 1024, threads: int | None = None) -> float | None:
    """Returns measured GEMM throughput in TOPS with ONNX Runtime, or None if unsupported."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "gemm.onnx"
        onnx.save(_gemm_model(n, precision), path)
        try:
            sess = onnx_runtime.session(path, threads or this_host().cores)
        except Exception:  # the runtime has no kernel for this precision here
            return None
    rng = np.random.default_rng(1)
    if precision == "int8":
        feed = {"a": rng.integers(0, 255, (n, n), dtype=np.uint8)}
    else:
        feed = {"a": rng.standard_normal((n, n)).astype(np.float16 if precision == "fp16" else np.float32)}
    try:
        seconds_per = _time(lambda: sess.run(None, feed), seconds)
    except Exception:
        return None
    return 2 * n**3 / seconds_per / 1e12


def memory_bandwidth_gbs(seconds: float, mb: int = 256) -> float:
    """Returns measured copy bandwidth in GB/s (bytes read plus bytes written)."""
    src = np.ones(mb * 1024 * 1024 // 8)
    dst = np.empty_like(src)
    seconds_per = _time(lambda: np.copyto(dst, src), seconds)
    return 2 * src.nbytes / seconds_per / 1e9


def layer_overhead_us(seconds: float, layers: int = 64, threads: int | None = None) -> float:
    """Returns the runtime's fixed cost per operator in microseconds (a chain of tiny Adds)."""
    import tempfile

    x = helper.make_tensor_value_info("x0", TensorProto.FLOAT, [1, 8])
    nodes = [helper.make_node("Add", [f"x{i}", f"x{i}"], [f"x{i + 1}"]) for i in range(layers)]
    y = helper.make_tensor_value_info(f"x{layers}", TensorProto.FLOAT, [1, 8])
    model = helper.make_model(helper.make_graph(nodes, "chain", [x], [y]), opset_imports=[helper.make_opsetid("", 17)])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "chain.onnx"
        onnx.save(model, path)
        sess = onnx_runtime.session(path, threads or this_host().cores)
    feed = {"x0": np.ones((1, 8), np.float32)}
    return _time(lambda: sess.run(None, feed), seconds) / layers * 1e6


def _memory_gb() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return 1.0


def probe_host(name: str | None = None, seconds: float = 1.0) -> dict:
    """Returns profile data for this machine, every number measured here or read from the OS."""
    host = this_host()
    today = time.strftime("%Y-%m-%d")
    where = f"measured by `edgeprune profiles probe` on {host.description}, {today}"
    compute: dict[str, dict] = {}
    for precision in ("fp32", "fp16", "int8"):
        tops = gemm_tops(precision, seconds / 3 if precision != "fp32" else seconds)
        if tops:
            kernel = "MatMulInteger U8xS8" if precision == "int8" else f"MatMul {precision}"
            compute[precision] = {"dense_tops": round(tops, 5),
                                  "source": f"{where}: ONNX Runtime {kernel} 1024x1024x1024"}
    flags = sorted(f for f in RELEVANT_FLAGS if f in host.flags)
    vnni = bool({"avx512_vnni", "avx_vnni"} & host.flags)
    simd_lanes = 16 if "avx512f" in host.flags else 8 if "avx2" in host.flags else 4
    hostname = re.sub(r"[^a-z0-9._-]+", "-", platform.node().lower()).strip("-") or "host"
    return {
        "name": name or f"probed-{hostname}",
        "family": "x86" if host.is_x86 else "arm" if host.machine in ("aarch64", "arm64") else "custom",
        "description": f"this machine as probed: {host.description}",
        "formats": ["onnx"],
        "precisions": list(compute),
        "int8_activation": "s8" if vnni else "u8",
        "cores": host.cores,
        "cpu_flags": flags,
        "channel_multiple": {"value": simd_lanes, "source": f"{where}: fp32 SIMD lanes of the widest vector unit"},
        "memory_bandwidth_gbs": {"value": round(memory_bandwidth_gbs(seconds), 2), "source": f"{where}: numpy copy of 256 MiB"},
        "memory_gb": {"value": _memory_gb(), "source": f"{where}: /proc/meminfo MemTotal"},
        "compute": compute,
        "sparsity": {"source": "ONNX Runtime's CPU kernels are dense: unstructured and N:M zeros are computed like any other weight"},
        "efficiency": {
            "compute": 0.8, "bandwidth": 0.8, "layer_overhead_us": round(layer_overhead_us(seconds / 2), 2),
            "source": f"{where}: overhead from a chain of 64 tiny Add operators; compute and bandwidth "
                      "factors relative to the measured GEMM and copy rates",
        },
    }


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
