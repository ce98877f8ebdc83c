"""Probing this machine: measured peaks that make a valid profile of it."""

from __future__ import annotations

import os
import platform
import re
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from edgeprune.backends import onnx_runtime
from edgeprune.host import RELEVANT_FLAGS, memory_gb, this_host
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
    """Returns the fastest of repeated runs in seconds: a peak is what the machine can do
    when nothing else runs, and the fastest run is the one least disturbed by other load."""
    fn()
    times = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 3:
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.min(times))


GEMM_SIZES = (256, 512, 1024)
UNCALIBRATED = "; compute and bandwidth 0.8 assumed, not calibrated"


def peak_gemm_tops(precision: str, seconds: float, threads: int | None = None) -> float | None:
    """Returns the best GEMM throughput over square sizes in TOPS, or None if unsupported.

    Small sizes matter: their operands stay in cache, so they show the arithmetic peak even
    where other programs share the last-level cache; large sizes show it on a quiet machine.
    """
    rates = [gemm_tops(precision, seconds / len(GEMM_SIZES), n, threads) for n in GEMM_SIZES]
    found = [r for r in rates if r]
    return max(found) if found else None


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


def int8_layer_overhead_us(seconds: float, int8_activation: str, layers: int = 32, threads: int | None = None) -> float:
    """Returns the fixed cost of one int8 kernel in microseconds (a chain of tiny QLinearConvs).

    An int8 convolution quantizes, packs and requantizes around its GEMM: on small layers
    that costs more than the GEMM, and more than a float operator's overhead.
    """
    import tempfile

    rng = np.random.default_rng(3)
    shape = (1, 8, 4, 4)
    nodes, inits = [], []
    for i in range(layers):
        inits.append(onnx.numpy_helper.from_array((rng.standard_normal((8, 8, 1, 1)) * 0.3).astype(np.float32), f"w{i}"))
        nodes.append(helper.make_node("Conv", ["x" if i == 0 else f"t{i}", f"w{i}"], [f"t{i + 1}"], kernel_shape=[1, 1]))
    graph = helper.make_graph(nodes, "int8-chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
                              [helper.make_tensor_value_info(f"t{layers}", TensorProto.FLOAT, list(shape))], inits)
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "chain.onnx"
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), fp32)
        int8 = _quantize_int8(fp32, Path(tmp) / "chain-int8.onnx", int8_activation, shape)
        sess = onnx_runtime.session(int8, threads or this_host().cores)
    feed = {"x": rng.standard_normal(shape).astype(np.float32)}
    return _time(lambda: sess.run(None, feed), seconds) / layers * 1e6


# The representative network the compute efficiency is calibrated on: a batch-1 CNN backbone
# of 3x3 convolutions (16 to 256 channels, 64x64 down to 8x8), each followed by a ReLU.
CALIBRATION_CNN = ((16, 32, 1), (32, 64, 2), (64, 64, 1), (64, 128, 2), (128, 128, 1), (128, 256, 2), (256, 256, 1))
# Two input sizes: at 64x64 every activation fits the caches, at 192x192 the first layers'
# do not; convolutions run at visibly different efficiency in the two regimes, and models
# span both (a 32x32 digits CNN, a 224x224 ResNet).
CALIBRATION_INPUTS = ((1, 16, 64, 64), (1, 16, 192, 192))


def calibration_cnn(shape: tuple[int, ...] = CALIBRATION_INPUTS[0]) -> onnx.ModelProto:
    """Returns the calibration CNN for an input shape as an fp32 ONNX model with fixed random weights."""
    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "x"
    for i, (cin, cout, stride) in enumerate(CALIBRATION_CNN):
        w = (rng.standard_normal((cout, cin, 3, 3)) * np.sqrt(2 / (9 * cin))).astype(np.float32)
        inits += [onnx.numpy_helper.from_array(w, f"w{i}"),
                  onnx.numpy_helper.from_array(np.zeros(cout, np.float32), f"b{i}")]
        nodes += [helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"c{i}"], kernel_shape=[3, 3],
                                   pads=[1, 1, 1, 1], strides=[stride, stride]),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"])]
        x = f"r{i}"
    graph = helper.make_graph(nodes, "calibration_cnn",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


class _CalibrationReader:
    def __init__(self, batches: list[np.ndarray]) -> None:
        self._it = iter(batches)

    def get_next(self) -> dict | None:
        batch = next(self._it, None)
        return None if batch is None else {"x": batch}


def _quantize_int8(fp32: Path, out: Path, int8_activation: str, shape: tuple[int, ...]) -> Path:
    """Returns a static QDQ int8 copy of a model (the int8 format ONNX Runtime runs fastest)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    rng = np.random.default_rng(1)
    batches = [rng.standard_normal(shape).astype(np.float32) for _ in range(4)]
    quantize_static(str(fp32), str(out), _CalibrationReader(batches), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8 if int8_activation == "u8" else QuantType.QInt8,
                    weight_type=QuantType.QInt8, per_channel=True)
    return out


def _solve_efficiency(graph, profile_data: dict, measured_ms: float, field: str) -> float:
    """Returns the efficiency factor that makes the roofline estimate equal a measurement.

    The estimate falls as the factor rises, so bisection finds it; it is clamped to
    (0.01, 1] because a measurement faster than the peak means the peak was measured low.
    """
    from edgeprune.measure.estimate import estimate_graph
    from edgeprune.profile import Profile

    def estimate(factor: float) -> float:
        eff = {**profile_data["efficiency"], field: factor}
        return estimate_graph(graph, Profile.model_validate({**profile_data, "efficiency": eff})).ms

    lo, hi = 0.01, 1.0
    if estimate(hi) >= measured_ms:
        return hi
    if estimate(lo) <= measured_ms:
        return lo
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if estimate(mid) > measured_ms else (lo, mid)
    return round((lo + hi) / 2, 4)


def gemv_bandwidth_gbs(seconds: float, n: int = 4096, threads: int | None = None) -> float:
    """Returns the rate a batch-1 fp32 MatMul streams its n x n weight from memory, in GB/s."""
    import tempfile

    w = helper.make_tensor("w", TensorProto.FLOAT, [n, n],
                           np.random.default_rng(0).standard_normal((n, n)).astype(np.float32).tobytes(), raw=True)
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "w"], ["y"])], "gemv",
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, n])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])], [w])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "gemv.onnx"
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
        sess = onnx_runtime.session(path, threads or this_host().cores)
    feed = {"a": np.ones((1, n), np.float32)}
    return n * n * 4 / _time(lambda: sess.run(None, feed), seconds) / 1e9


def calibrate_efficiency(profile_data: dict, seconds: float, threads: int | None = None,
                         statistic: str = "median") -> dict:
    """Returns profile data with efficiency factors calibrated on this machine.

    compute: the factor that makes the estimate of the calibration CNN (fp32, and its int8
    QDQ copy where int8 runs) equal its measured median; where the two differ, the factor
    closer to fp32 and int8 alike (their geometric mean) is kept and both are recorded in
    the source. bandwidth: a batch-1 MatMul streaming a 64 MiB weight, as a fraction of
    the copy bandwidth. The measurements use the timing protocol of builds; ``statistic``
    is what the estimate is fitted to: the median a build reports, or the fastest run
    ("min"), which other load on the machine disturbs least.
    """
    import tempfile

    from edgeprune.measure.graph import lowered_graph
    from edgeprune.measure.protocol import Protocol, time_side_by_side

    threads = threads or this_host().cores
    data = {**profile_data}
    copy_gbs = data["memory_bandwidth_gbs"]["value"]
    gemv = gemv_bandwidth_gbs(seconds, threads=threads)
    bandwidth = min(1.0, gemv / copy_gbs)
    if gemv > copy_gbs:  # a streaming read beat the copy: the copy under-measured the bus
        data["memory_bandwidth_gbs"] = {**data["memory_bandwidth_gbs"], "value": round(gemv, 2),
                                        "source": data["memory_bandwidth_gbs"]["source"]
                                        + f"; raised to the {gemv:.1f} GB/s a batch-1 MatMul streamed its weights at"}
    data["efficiency"] = {**data["efficiency"], "bandwidth": round(max(bandwidth, 0.01), 4)}
    if "int8" in data["compute"]:  # before the compute factors, which are fitted with it
        data["efficiency"]["layer_overhead_us_by_precision"] = {
            "int8": round(int8_layer_overhead_us(seconds / 2, data["int8_activation"], threads=threads), 2)}
    models, runs, graphs = {}, {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for shape in CALIBRATION_INPUTS:
            size = f"{shape[2]}x{shape[3]}"
            fp32 = Path(tmp) / f"cnn-{size}.onnx"
            onnx.save(calibration_cnn(shape), fp32)
            models[("fp32", shape)] = fp32
            if "int8" in data["compute"]:
                models[("int8", shape)] = _quantize_int8(fp32, Path(tmp) / f"cnn-{size}-int8.onnx",
                                                         data["int8_activation"], shape)
        for key, path in models.items():
            feed = {"x": np.random.default_rng(2).standard_normal(key[1]).astype(np.float32)}
            sess = onnx_runtime.session(path, threads)
            runs[key] = (lambda s=sess, f=feed: s.run(None, f))
            graphs[key] = lowered_graph(path, [key[1]])
    rounds = max(4, int(seconds * 8))
    stats = time_side_by_side(runs, Protocol(warmup_s=seconds / 4, round_s=seconds / 4, min_rounds=rounds,
                                             max_rounds=2 * rounds))
    measured_ms = {key: stats[key].min_ms if statistic == "min" else stats[key].median_ms for key in stats}
    factors = {key: _solve_efficiency(graphs[key], data, measured_ms[key], "compute") for key in graphs}
    # one factor per precision over the sizes (and one over all, for the precisions not timed):
    # the geometric mean, the factor whose worst relative error over the calibration runs is
    # smallest when they differ by a constant ratio. int8 and fp32 kernels reach different
    # shares of their peaks (a GEMM peak hides int8's quantize and requantize work), so one
    # shared factor would make int8 estimates optimistic where VNNI makes the peak high.
    def geomean(values: list[float]) -> float:
        return round(float(np.exp(np.mean(np.log(values)))), 4)

    compute = geomean(list(factors.values()))
    data["efficiency"]["compute"] = compute
    data["efficiency"]["compute_by_precision"] = {
        p: geomean([v for k, v in factors.items() if k[0] == p]) for p in dict.fromkeys(k[0] for k in factors)}
    measured = ", ".join(f"{k[0]} {k[1][2]}x{k[1][3]} ({graphs[k].flops / 1e9:.2f} GFLOP) {measured_ms[k]:.3g} ms "
                         f"(spread {stats[k].spread:.0%}) -> {v:.3g}" for k, v in factors.items())
    data["efficiency"]["source"] = (
        f"{data['efficiency']['source'].replace(UNCALIBRATED, '')}; compute {compute:g} (by precision "
        f"{', '.join(f'{p} {v:g}' for p, v in data['efficiency']['compute_by_precision'].items())}) calibrated so the roofline "
        f"estimates of a {len(CALIBRATION_CNN)}-layer 3x3-conv CNN at batch 1 match its "
        f"{'fastest run' if statistic == 'min' else 'median'} under the build timing protocol ({measured}; "
        f"geometric means kept); int8 kernels "
        f"{data['efficiency'].get('layer_overhead_us_by_precision', {}).get('int8', '—')} us each (a chain of 32 "
        f"tiny QLinearConvs); bandwidth {data['efficiency']['bandwidth']:g} = "
        f"{gemv:.1f} GB/s of a batch-1 MatMul over a 64 MiB weight / {copy_gbs:.1f} GB/s copy"
        f"{_load_note()}")
    return data


def busy_load() -> float | None:
    """Returns the 1-minute load average per core of this machine, or None where unknown."""
    try:
        return os.getloadavg()[0] / this_host().cores
    except (OSError, AttributeError):
        return None


def _load_note() -> str:
    load = busy_load()
    return "" if load is None else f"; load average {load * this_host().cores:.1f} on {this_host().cores} cores while probing"


def probe_host(name: str | None = None, seconds: float = 1.0, calibrate: bool = True,
               threads: int | None = None) -> dict:
    """Returns profile data for this machine, every number measured here or read from the OS.

    With ``calibrate`` the estimator's efficiency factors are measured too (see
    ``calibrate_efficiency``); without, they are a rough 0.8 and say so. ``threads`` probes
    that many cores (all by default): a profile of the share of the machine a model gets.
    """
    host = this_host()
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
    hostname = re.sub(r"[^a-z0-9._-]+", "-", platform.node().lower()).strip("-") or "host"
    data = {
        "name": name or f"probed-{hostname}",
        "family": "x86" if host.is_x86 else "arm" if host.machine in ("aarch64", "arm64") else "custom",
        "description": f"this machine as probed: {host.description}"
                       + (f", using {threads} of its cores" if threads != host.cores else ""),
        "formats": ["onnx"],
        "precisions": list(compute),
        "int8_activation": "s8" if host.int8_full_range else "u8",  # VNNI, AVX-VNNI or AMX
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
    return calibrate_efficiency(data, seconds, threads) if calibrate else data


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
