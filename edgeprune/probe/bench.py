"""Micro-benchmarks of this machine with ONNX Runtime: GEMM peaks, bandwidth, per-layer overhead."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from edgeprune.backends.onnx_tools import runtime as onnx_runtime
from edgeprune.host import this_host


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


def best_seconds(fn, seconds: float) -> float:
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
        seconds_per = best_seconds(lambda: sess.run(None, feed), seconds)
    except Exception:
        return None
    return 2 * n**3 / seconds_per / 1e12


def memory_bandwidth_gbs(seconds: float, mb: int = 256) -> float:
    """Returns measured copy bandwidth in GB/s (bytes read plus bytes written)."""
    src = np.ones(mb * 1024 * 1024 // 8)
    dst = np.empty_like(src)
    seconds_per = best_seconds(lambda: np.copyto(dst, src), seconds)
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
    return best_seconds(lambda: sess.run(None, feed), seconds) / layers * 1e6


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
        int8 = quantize_int8(fp32, Path(tmp) / "chain-int8.onnx", int8_activation, shape)
        sess = onnx_runtime.session(int8, threads or this_host().cores)
    feed = {"x": rng.standard_normal(shape).astype(np.float32)}
    return best_seconds(lambda: sess.run(None, feed), seconds) / layers * 1e6


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
    return n * n * 4 / best_seconds(lambda: sess.run(None, feed), seconds) / 1e9


def quantize_int8(fp32: Path, out: Path, int8_activation: str, shape: tuple[int, ...]) -> Path:
    """Returns a static QDQ int8 copy of a model (the int8 format ONNX Runtime runs fastest)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    rng = np.random.default_rng(1)
    batches = [rng.standard_normal(shape).astype(np.float32) for _ in range(4)]
    quantize_static(str(fp32), str(out), _CalibrationReader(batches), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8 if int8_activation == "u8" else QuantType.QInt8,
                    weight_type=QuantType.QInt8, per_channel=True)
    return out


def busy_load() -> float | None:
    """Returns the 1-minute load average per core of this machine, or None where unknown."""
    try:
        return os.getloadavg()[0] / this_host().cores
    except (OSError, AttributeError):
        return None


def load_note() -> str:
    load = busy_load()
    return "" if load is None else f"; load average {load * this_host().cores:.1f} on {this_host().cores} cores while probing"


class _CalibrationReader:
    def __init__(self, batches: list[np.ndarray]) -> None:
        self._it = iter(batches)

    def get_next(self) -> dict | None:
        batch = next(self._it, None)
        return None if batch is None else {"x": batch}
