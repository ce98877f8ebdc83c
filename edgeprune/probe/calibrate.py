"""Calibrating the estimator's efficiency factors on a representative CNN timed on this machine."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from edgeprune.backends.onnx_tools import runtime as onnx_runtime
from edgeprune.host import this_host
from edgeprune.measure.graph import ANCHORS
from edgeprune.probe.bench import (
    UNCALIBRATED,
    gemv_bandwidth_gbs,
    int8_layer_overhead_us,
    load_note,
    quantize_int8,
)
from edgeprune.profile import SHALLOW_TAP_CHANNELS

# The representative network the compute efficiency is calibrated on: a batch-1 CNN backbone
# of 3x3 convolutions (16 to 256 channels, 64x64 down to 8x8), each followed by a ReLU.
CALIBRATION_CNN = ((16, 32, 1), (32, 64, 2), (64, 64, 1), (64, 128, 2), (128, 128, 1), (128, 256, 2), (256, 256, 1))
# Two input sizes: at 64x64 every activation fits the caches, at 192x192 the first layers'
# do not; convolutions run at visibly different efficiency in the two regimes, and models
# span both (a 32x32 digits CNN, a 224x224 ResNet).
CALIBRATION_INPUTS = ((1, 16, 64, 64), (1, 16, 192, 192))
# An image's first layer's costs are fitted on RGB stems at 224x224 (3 channels a tap), each followed by a global
# average pool; two windows and widths so the cost per output and per output pixel and window row come apart:
# 3x3 stride 2 to 32 channels (as MobileNet and EfficientNet open) and 5x5 stride 2 to 16. Their time also holds
# the layout change a runtime makes before its first convolution.
STEM_INPUT = (1, 3, 224, 224)
STEMS = ((32, 3, 2), (16, 5, 2))  # out channels, kernel, stride
# A depthwise layer's cost per output and per channel plane is fitted on chains of four 3x3 depthwise convs with
# ReLU (the second of stride 2) on wide (64 channels at 112x112), middle (256 at 28x28) and small maps (960 at 5x5).
DEPTHWISE_INPUTS = ((1, 64, 112, 112), (1, 256, 28, 28), (1, 960, 5, 5))
# The pointwise convolutions the per-output cost of every one-group convolution is fitted on: chains
# of 1x1 convolutions with ReLU that expand six times and project back, as a mobile network's inverted
# residuals do, at two widths (16 channels at 80x80, 32 at 40x40): they reduce over so few channels
# that storing each output costs as much as its arithmetic.
POINTWISE_INPUTS = ((1, 16, 80, 80), (1, 32, 40, 40))
POINTWISE_EXPAND = 6
# The operators between a transformer's products (bias and residual Adds, LayerNormalization, GELU,
# Softmax, the heads' Reshapes and Transposes) cost more per element than their memory traffic, and
# more inside a model, where the products between them evict their tensors from the caches, than
# alone: their per-element cost is fitted on two encoder layers of the probe's own (width 256, 4
# heads, FFN 1024, the products charged at the CNN's compute factor), at 64 and 256 tokens.
BETWEEN_INPUTS = ((1, 64, 256), (1, 256, 256))
BETWEEN_HEADS, BETWEEN_FFN, BETWEEN_LAYERS = 4, 1024, 2
# the operators of ONNX Runtime's optimized graph that are products (the rest is between them)
PRODUCT_OPS = ANCHORS | {"MatMulIntegerToFloat", "NhwcFusedConv"}


def _conv_chain(name: str, shape: tuple[int, ...], layers, seed: int, kernel: int = 3) -> onnx.ModelProto:
    """Returns ``kernel`` x ``kernel`` convolutions, each followed by a ReLU, as an fp32 ONNX model with fixed
    random weights; ``layers`` are (input channels, output channels, stride, groups)."""
    rng = np.random.default_rng(seed)
    nodes, inits, x = [], [], "x"
    for i, (cin, cout, stride, groups) in enumerate(layers):
        fan_in = kernel * kernel * cin // groups
        w = (rng.standard_normal((cout, cin // groups, kernel, kernel)) * np.sqrt(2 / fan_in)).astype(np.float32)
        inits += [onnx.numpy_helper.from_array(w, f"w{i}"),
                  onnx.numpy_helper.from_array(np.zeros(cout, np.float32), f"b{i}")]
        nodes += [helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"c{i}"], kernel_shape=[kernel, kernel],
                                   pads=[kernel // 2] * 4, strides=[stride, stride], group=groups),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"])]
        x = f"r{i}"
    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def calibration_cnn(shape: tuple[int, ...] = CALIBRATION_INPUTS[0]) -> onnx.ModelProto:
    """Returns the calibration CNN for an input shape as an fp32 ONNX model with fixed random weights."""
    return _conv_chain("calibration_cnn", shape, [(cin, cout, stride, 1) for cin, cout, stride in CALIBRATION_CNN], 0)


def stem_model(stem: tuple[int, int, int]) -> onnx.ModelProto:
    """Returns an RGB stem (convolution, ReLU, global average pool) as an fp32 ONNX model."""
    cout, k, stride = stem
    cin = STEM_INPUT[1]
    rng = np.random.default_rng(4)
    w = (rng.standard_normal((cout, cin, k, k)) * np.sqrt(2 / (k * k * cin))).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[k, k], pads=[k // 2] * 4,
                              strides=[stride, stride]),
             helper.make_node("Relu", ["c"], ["r"]), helper.make_node("GlobalAveragePool", ["r"], ["y"])]
    graph = helper.make_graph(nodes, "calibration_stem",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(STEM_INPUT))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [onnx.numpy_helper.from_array(w, "w"),
                               onnx.numpy_helper.from_array(np.zeros(cout, np.float32), "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def depthwise_model(shape: tuple[int, ...]) -> onnx.ModelProto:
    """Returns a chain of 3x3 depthwise convolutions with ReLU at an input shape, as an fp32 ONNX model."""
    c = shape[1]
    return _conv_chain("calibration_depthwise", shape, [(c, c, stride, c) for stride in (1, 2, 1, 1)], 5)


def pointwise_model(shape: tuple[int, ...]) -> onnx.ModelProto:
    """Returns 1x1 convolutions with ReLU that expand an input's channels and project them back, twice, fp32."""
    c, wide = shape[1], shape[1] * POINTWISE_EXPAND
    return _conv_chain("calibration_pointwise", shape, [(c, wide, 1, 1), (wide, c, 1, 1)] * 2, 7, kernel=1)


def between_model(shape: tuple[int, ...]) -> onnx.ModelProto:
    """Returns encoder layers (post-norm, GELU) over an input of (batch, tokens, width), fp32, random weights."""
    _, tokens, width = shape
    heads, ffn = BETWEEN_HEADS, BETWEEN_FFN
    rng = np.random.default_rng(6)
    inits, nodes = [], []

    def const(name: str, value) -> str:
        inits.append(onnx.numpy_helper.from_array(np.asarray(value, np.float32 if not isinstance(value, tuple)
                                                             else np.int64), name))
        return name

    def op(kind: str, inputs: list[str], out: str, **attrs) -> str:
        nodes.append(helper.make_node(kind, inputs, [out], **attrs))
        return out

    def linear(x: str, name: str, cin: int, cout: int) -> str:
        w = const(f"{name}.w", rng.standard_normal((cin, cout)) / np.sqrt(cin))
        return op("Add", [op("MatMul", [x, w], f"{name}.mm"), const(f"{name}.b", rng.standard_normal(cout) * 0.02)],
                  f"{name}.out")

    def norm(x: str, name: str) -> str:
        return op("LayerNormalization", [x, const(f"{name}.g", np.ones(width)), const(f"{name}.b", np.zeros(width))],
                  f"{name}.out", axis=-1)

    # the batch axis free, as edgeprune exports models (ONNX Runtime fuses less around free axes): 0 keeps it
    split, merged = const("split", (0, tokens, heads, width // heads)), const("merged", (0, tokens, width))
    const("scale", 1 / np.sqrt(width // heads))
    const("sqrt2", 2 ** 0.5), const("one", 1.0), const("half", 0.5)
    x = "x"
    for i in range(BETWEEN_LAYERS):
        def heads_of(t: str, perm: list[int], name: str) -> str:
            return op("Transpose", [op("Reshape", [t, split], f"{name}.r")], f"{name}.t", perm=perm)

        q = heads_of(linear(x, f"l{i}.q", width, width), [0, 2, 1, 3], f"l{i}.qh")
        k = heads_of(linear(x, f"l{i}.k", width, width), [0, 2, 3, 1], f"l{i}.kh")
        v = heads_of(linear(x, f"l{i}.v", width, width), [0, 2, 1, 3], f"l{i}.vh")
        scores = op("Softmax", [op("Mul", [op("MatMul", [q, k], f"l{i}.qk"), "scale"], f"l{i}.s")], f"l{i}.p", axis=-1)
        context = op("Reshape", [op("Transpose", [op("MatMul", [scores, v], f"l{i}.pv")], f"l{i}.ct", perm=[0, 2, 1, 3]),
                                 merged], f"l{i}.c")
        x = norm(op("Add", [x, linear(context, f"l{i}.o", width, width)], f"l{i}.res1"), f"l{i}.n1")
        h = linear(x, f"l{i}.fc1", width, ffn)
        erf = op("Add", [op("Erf", [op("Div", [h, "sqrt2"], f"l{i}.d")], f"l{i}.e"), "one"], f"l{i}.e1")
        gelu = op("Mul", [op("Mul", [h, erf], f"l{i}.m"), "half"], f"l{i}.g")
        x = norm(op("Add", [x, linear(gelu, f"l{i}.fc2", ffn, width)], f"l{i}.res2"), f"l{i}.n2")
    graph = helper.make_graph(nodes, "calibration_encoder",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", tokens, width])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["batch", tokens, width])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _estimate(graph, profile_data: dict):
    from edgeprune.measure.estimate import estimate_graph
    from edgeprune.profile import Profile

    return estimate_graph(graph, Profile.model_validate(profile_data))


def _solve_efficiency(graph, profile_data: dict, measured_ms: float, field: str) -> float:
    """Returns the efficiency factor that makes the roofline estimate equal a measurement.

    The estimate falls as the factor rises, so bisection finds it; it is clamped to
    (0.01, 1] because a measurement faster than the peak means the peak was measured low.
    """
    def estimate(factor: float) -> float:
        return _estimate(graph, {**profile_data, "efficiency": {**profile_data["efficiency"], field: factor}}).ms

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

    from edgeprune.measure.graph import ONNXRUNTIME, lowered_graph
    from edgeprune.timing import Protocol, time_side_by_side

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
    for fitted_below in ("shallow_conv", "depthwise", "depthwise_channel", "conv_output", "elementwise"):  # on the compute factors
        data["efficiency"].pop(f"{fitted_below}_ns_by_precision", None)
    if "int8" in data["compute"]:  # before the compute factors, which are fitted with it
        data["efficiency"]["layer_overhead_us_by_precision"] = {
            "int8": round(int8_layer_overhead_us(seconds / 2, data["int8_activation"], threads=threads), 2)}
    models, runs, graphs, product_share = {}, {}, {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for shape in (*CALIBRATION_INPUTS, *STEMS, *DEPTHWISE_INPUTS, *POINTWISE_INPUTS, *BETWEEN_INPUTS):
            stem, depthwise, between = shape in STEMS, shape in DEPTHWISE_INPUTS, shape in BETWEEN_INPUTS
            pointwise = shape in POINTWISE_INPUTS
            size = (f"stem{shape[1]}x{shape[1]}" if stem else f"dw{shape[1]}-{shape[2]}" if depthwise
                    else f"pw{shape[1]}-{shape[2]}" if pointwise
                    else f"between{shape[1]}x{shape[2]}" if between else f"{shape[2]}x{shape[3]}")
            fp32 = Path(tmp) / f"cnn-{size}.onnx"
            onnx.save(stem_model(shape) if stem else depthwise_model(shape) if depthwise else pointwise_model(shape)
                      if pointwise else between_model(shape) if between else calibration_cnn(shape), fp32)
            models[("fp32", shape)] = fp32
            if "int8" in data["compute"] and not between:  # int8 builds quantize layers, not these
                models[("int8", shape)] = quantize_int8(fp32, Path(tmp) / f"cnn-{size}-int8.onnx",
                                                         data["int8_activation"], STEM_INPUT if stem else shape)
        for key, path in models.items():
            x_shape = STEM_INPUT if key[1] in STEMS else key[1]
            feed = {"x": np.random.default_rng(2).standard_normal(x_shape).astype(np.float32)}
            sess = onnx_runtime.session(path, threads)
            runs[key] = (lambda s=sess, f=feed: s.run(None, f))
            graphs[key] = lowered_graph(path, [x_shape], runtime=ONNXRUNTIME)  # grouped as ONNX Runtime runs it
            if key[1] not in CALIBRATION_INPUTS:  # the share of a run its products take, from ONNX Runtime's profiler
                ops = onnx_runtime.op_times_ms(path, feed, threads, max(10, int(seconds * 20)))
                # a stem's share holds the layout change before it (a real network pays it once, at its stem)
                products = PRODUCT_OPS | ({"ReorderInput", "ReorderOutput"} if key[1] in STEMS else set())
                product_share[key] = sum(v for op, v in ops.items() if op in products) / max(sum(ops.values()), 1e-9)
    rounds = max(4, int(seconds * 8))
    stats = time_side_by_side(runs, Protocol(warmup_s=seconds / 4, round_s=seconds / 4, min_rounds=rounds,
                                             max_rounds=2 * rounds))
    measured_ms = {key: stats[key].min_ms if statistic == "min" else stats[key].median_ms for key in stats}
    cnn = [key for key in graphs if key[1] in CALIBRATION_INPUTS]
    precisions = list(dict.fromkeys(k[0] for k in graphs))
    # one factor per precision over the sizes (and one over all, for the precisions not timed):
    # the geometric mean, the factor whose worst relative error over the calibration runs is
    # smallest when they differ by a constant ratio. int8 and fp32 kernels reach different
    # shares of their peaks (a GEMM peak hides int8's quantize and requantize work), so one
    # shared factor would make int8 estimates optimistic where VNNI makes the peak high.
    def geomean(values: list[float]) -> float:
        return round(float(np.exp(np.mean(np.log(values)))), 4)

    def products(precision: str, shapes) -> list[tuple]:
        """(graph, the milliseconds its products took) of the timed graphs of a precision at these shapes."""
        return [(graphs[k], measured_ms[k] * product_share[k]) for k in graphs if k[0] == precision and k[1] in shapes]

    # the compute factor and the per-output cost of convolutions explain each other's runs (a 3x3
    # CNN's time is mostly FLOPs, a 1x1 chain's mostly outputs): each is fitted given the other, twice
    for _ in range(2):
        data["efficiency"].pop("compute_by_precision", None)  # solved below through the shared factor
        factors = {key: _solve_efficiency(graphs[key], data, measured_ms[key], "compute") for key in cnn}
        compute = geomean(list(factors.values()))
        data["efficiency"]["compute"] = compute
        data["efficiency"]["compute_by_precision"] = {
            p: geomean([v for k, v in factors.items() if k[0] == p]) for p in dict.fromkeys(k[0] for k in factors)}
        data["efficiency"].pop("conv_output_ns_by_precision", None)
        data["efficiency"]["conv_output_ns_by_precision"] = pointwise = {
            p: _fit_per_element(products(p, POINTWISE_INPUTS), data, lambda k: k.output_elements) for p in precisions}
    data["efficiency"]["shallow_conv_ns_by_precision"] = shallow = {
        p: _fit_shallow(products(p, STEMS), data) for p in precisions}
    depthwise = {p: _fit_depthwise(products(p, DEPTHWISE_INPUTS), data) for p in precisions}
    data["efficiency"].update(depthwise_ns_by_precision={p: a for p, (a, _) in depthwise.items()},
                              depthwise_channel_ns_by_precision={p: b for p, (_, b) in depthwise.items()})
    data["efficiency"]["elementwise_ns_by_precision"] = elementwise = {"fp32": _fit_per_element(
        [(graphs[k], measured_ms[k] * (1 - share)) for k, share in product_share.items() if k[1] in BETWEEN_INPUTS],
        data, lambda k: k.elements, lambda k: k.op not in ANCHORS)}
    measured = ", ".join(f"{k[0]} {k[1][2]}x{k[1][3]} ({graphs[k].flops / 1e9:.2f} GFLOP) {measured_ms[k]:.3g} ms "
                         f"(spread {stats[k].spread:.0%}) -> {v:.3g}" for k, v in factors.items())
    stems = ", ".join(f"{k[0]} {k[1][1]}x{k[1][1]} to {k[1][0]} {measured_ms[k]:.3g} ms" for k in graphs if k[1] in STEMS)
    data["efficiency"]["source"] = (
        f"{data['efficiency']['source'].replace(UNCALIBRATED, '')}; compute {compute:g} (by precision "
        f"{', '.join(f'{p} {v:g}' for p, v in data['efficiency']['compute_by_precision'].items())}) calibrated so the roofline "
        f"estimates of a {len(CALIBRATION_CNN)}-layer 3x3-conv CNN at batch 1 match its "
        f"{'fastest run' if statistic == 'min' else 'median'} under the build timing protocol ({measured}; "
        f"geometric means kept); shallow convolutions "
        f"{', '.join(f'{p} {a:.3g} ns per output + {b:.3g} ns per output pixel and window row' for p, (a, b) in shallow.items())}, "
        f"fitted to RGB stems at 224x224 ({stems}); depthwise convolutions "
        f"{', '.join(f'{p} {a:.3g} ns per output + {b:.3g} ns per channel' for p, (a, b) in depthwise.items())}, fitted to chains of 3x3 "
        f"depthwise convolutions ({', '.join(f'{c} channels at {h}x{w}' for _, c, h, w in DEPTHWISE_INPUTS)}); "
        f"every one-group convolution "
        f"{', '.join(f'{p} {v:.3g} ns per output' for p, v in pointwise.items())} beyond its FLOPs, fitted to "
        f"chains of 1x1 convolutions expanding {POINTWISE_EXPAND} times "
        f"({', '.join(f'{c} channels at {h}x{w}' for _, c, h, w in POINTWISE_INPUTS)}); "
        f"operators between layers {elementwise['fp32']:.3g} ns per element (fp32), fitted to the time ONNX Runtime's "
        f"profiler saw them take in {BETWEEN_LAYERS} "
        f"encoder layers of its own (width {BETWEEN_INPUTS[0][2]}, {BETWEEN_HEADS} heads, FFN {BETWEEN_FFN}) over "
        f"{' and '.join(str(t) for _, t, _ in BETWEEN_INPUTS)} tokens; "
        f"int8 kernels "
        f"{data['efficiency'].get('layer_overhead_us_by_precision', {}).get('int8', '—')} us each (a chain of 32 "
        f"tiny QLinearConvs); bandwidth {data['efficiency']['bandwidth']:g} = "
        f"{gemv:.1f} GB/s of a batch-1 MatMul over a 64 MiB weight / {copy_gbs:.1f} GB/s copy"
        f"{load_note()}")
    return calibrate_decoder(data, seconds, threads) if "int4" in data["precisions"] else data


def calibrate_decoder(data: dict, seconds: float, threads: int) -> dict:
    """Returns profile data with the estimator's decoder terms fitted on this machine.

    attention: the share of the fp32 peak GroupQueryAttention reaches decoding one token over
    512 cached ones, and over a 256-token prompt, timed alone (medians). Then a calibration decoder of
    the probe's own (random int4 weights, decoder_bench) runs as a build runs one:
    bandwidth_by_precision.int4 makes the estimate of its decode step equal the step's median,
    compute.int4 (at efficiency 1) the estimate of its prompt's pass, each after the attention
    and the per-kernel overhead the estimate already counts.
    """
    import tempfile

    from edgeprune.measure.generation_estimate import DecoderFacts, decode_parts, prefill_parts
    from edgeprune.probe import decoder_bench as bench
    from edgeprune.profile import Profile

    data = {**data, "efficiency": dict(data["efficiency"])}
    peak = data["compute"]["fp32"]["dense_tops"] * 1e3
    decode, prompt = (bench.attention_gflops(seconds / 2, tokens, past, threads) for tokens, past in ((1, 512), (256, 0)))
    data["efficiency"]["attention"] = {"decode": round(min(1.0, decode / peak), 4), "prompt": round(min(1.0, prompt / peak), 4)}
    with tempfile.TemporaryDirectory() as tmp:
        # a short probe (--seconds under 1, as tests run it) writes a 2-layer decoder instead of 8
        timed = bench.time_calibration_decoder(Path(tmp), 256, 32, threads, bench.LAYERS if seconds >= 1 else 2)
    facts = DecoderFacts(timed["layers"], 2048, bench.HEADS, bench.KV_HEADS, bench.HEAD, 8000, timed["matmul_params"],
                         timed["weight_bytes"], 4, "fp32", "int4")
    # start from efficiency 1 (and a nominal int4 rate): each weights term is then scaled to fit
    data["efficiency"]["bandwidth_by_precision"] = {"int4": 1.0}
    data["compute"] = {**data["compute"], "int4": {"dense_tops": 1.0, "source": "fitted below"}}
    data["efficiency"]["compute_by_precision"] = {**data["efficiency"].get("compute_by_precision", {}), "int4": 1.0}
    profile = Profile.model_validate(data)
    weights_s, attention_s, overhead_s = decode_parts(facts, profile, timed["depth"])
    left = max(timed["decode_s"] - attention_s - overhead_s, weights_s)  # never faster than the bus at full speed
    share = round(min(1.0, weights_s / left), 4)
    weights_s, attention_s, overhead_s = prefill_parts(facts, profile, timed["prompt"])
    compute_s = max(timed["prefill_s"] - attention_s - overhead_s, 1e-9)
    tops = 2 * facts.matmul_params * timed["prompt"] / compute_s / 1e12
    data["efficiency"]["bandwidth_by_precision"] = {"int4": share}
    data["compute"]["int4"] = {"dense_tops": round(tops, 5), "source": (
        f"probed: a calibration decoder of {timed['layers']} layers (int4 blocks of {bench.INT4_BLOCK}, random weights, "
        f"{facts.weight_bytes / 1e6:.0f} MB) run as builds run decoders: its 256-token prompt took "
        f"{timed['prefill_s'] * 1e3:.0f} ms, less its attention")}
    data["efficiency"]["source"] = (
        f"{data['efficiency']['source']}; decoder: GroupQueryAttention {decode:.1f} GFLOP/s decoding over 512 tokens, "
        f"{prompt:.1f} GFLOP/s over a 256-token prompt; the calibration decoder's decode step "
        f"{timed['decode_s'] * 1e3:.2f} ms at {timed['depth']} tokens: int4 blocks streamed at "
        f"{share * data['memory_bandwidth_gbs']['value']:.1f} GB/s")
    return data


def _fit_per_element(timed: list[tuple], data: dict, elements, chosen=lambda k: k.op in ANCHORS) -> float:
    """Returns the ns per element the chosen kernels of the timed graphs take beyond their estimate without
    that cost: least squares over the graphs, never negative. ``timed``: (graph, the milliseconds ONNX
    Runtime's profiler saw those kernels take); ``elements(kernel)`` counts a kernel's elements."""
    counts = np.array([sum(elements(k) for k in graph.kernels if chosen(k)) for graph, _ in timed], float)
    excess = np.array([max(0.0, ms - _kernels_ms(graph, data, chosen)) * 1e6 for graph, ms in timed])
    return round(float(max(0.0, counts @ excess / (counts @ counts))) if counts.any() else 0.0, 4)


def _kernels_ms(graph, data: dict, chosen=lambda k: k.op in ANCHORS) -> float:
    """Returns the estimated milliseconds of a graph's chosen kernels (its products, by default)."""
    return sum(t.ms for k, t in zip(graph.kernels, _estimate(graph, data).kernels, strict=True) if chosen(k))


def _fit_shallow(stems: list[tuple], data: dict) -> list[float]:
    """Returns [ns per output, ns per pixel and window row] of shallow convolutions, from timed stems (their
    convolutions' share of the run in ONNX Runtime's profiler, with the layout change before them)."""
    def terms(graph) -> list[float]:
        shallow = [k for k in graph.kernels if 0 < k.tap_channels < SHALLOW_TAP_CHANNELS]
        return [sum(k.output_elements for k in shallow),
                sum(k.output_elements / k.out_channels * k.window_rows for k in shallow)]
    return _fit_two_terms(stems, data, terms)


def _fit_depthwise(chains: list[tuple], data: dict) -> list[float]:
    """Returns [ns per output, ns per channel plane] of depthwise convolutions, from timed chains."""
    return _fit_two_terms(chains, data, lambda g: [sum(k.depthwise_outputs for k in g.kernels), sum(k.depthwise_channels for k in g.kernels)])


def _fit_two_terms(timed: list[tuple], data: dict, terms) -> list[float]:
    """Returns two costs in ns per unit of ``terms(graph)`` explaining what each timed graph's products took beyond
    their estimate without them: least squares, neither negative (where one would be, the other alone is fitted)."""
    a = np.array([terms(graph) for graph, _ in timed], float)
    b = np.array([max(0.0, ms - _kernels_ms(graph, data)) * 1e6 for graph, ms in timed])  # ns
    fit = np.linalg.lstsq(a, b, rcond=None)[0] if len(timed) > 1 else np.array([-1.0, -1.0])
    if (fit < 0).any():
        fit = np.zeros(2)
        col = 0 if a[:, 0] @ b > 0 else 1
        fit[col] = max(0.0, float(a[:, col] @ b / max(a[:, col] @ a[:, col], 1e-30)))
    return [round(float(v), 4) for v in fit]
