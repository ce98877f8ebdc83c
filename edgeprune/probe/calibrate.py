"""Calibrating the estimator's efficiency factors on a representative CNN timed on this machine."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from edgeprune.backends.onnx_tools import runtime as onnx_runtime
from edgeprune.host import this_host
from edgeprune.probe.bench import (
    UNCALIBRATED,
    gemv_bandwidth_gbs,
    int8_layer_overhead_us,
    load_note,
    quantize_int8,
)

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
                models[("int8", shape)] = quantize_int8(fp32, Path(tmp) / f"cnn-{size}-int8.onnx",
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
        f"{load_note()}")
    return data
