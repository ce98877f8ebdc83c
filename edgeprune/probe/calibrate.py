"""Calibrating the estimator's efficiency factors on a representative CNN timed on this machine."""

from __future__ import annotations

import statistics
from pathlib import Path

import numpy as np
import onnx

from edgeprune.backends.onnx_tools import runtime as onnx_runtime
from edgeprune.gate import ESTIMATE_ERROR_BOUND
from edgeprune.host import Host, this_host
from edgeprune.measure.graph import ANCHORS
from edgeprune.probe.bench import (
    UNCALIBRATED,
    gemv_bandwidth_gbs,
    int8_layer_overhead_us,
    load_note,
    quantize_int8,
)
from edgeprune.probe.chains import (
    BETWEEN_FFN,
    BETWEEN_HEADS,
    BETWEEN_INPUTS,
    BETWEEN_LAYERS,
    CALIBRATION_CNN,
    CALIBRATION_INPUTS,
    DEPTHWISE_INPUTS,
    HANDOFF_INPUT,
    HANDOFF_LAYERS,
    POINTWISE_EXPAND,
    POINTWISE_INPUTS,
    STEM_INPUT,
    STEMS,
    between_model,
    calibration_cnn,
    depthwise_model,
    handoff_model,
    pointwise_model,
    stem_model,
)
from edgeprune.probe.fit import fit_depthwise, fit_per_element, fit_shallow, solve_efficiency

# the operators of ONNX Runtime's optimized graph that are products (the rest is between them)
PRODUCT_OPS = ANCHORS | {"MatMulIntegerToFloat", "NhwcFusedConv"}


def calibrate_efficiency(profile_data: dict, seconds: float, threads: int | None = None,
                         statistic: str = "median", host: Host | None = None) -> dict:
    """Returns profile data with efficiency factors calibrated on this machine.

    compute: the factor that makes the estimate of the calibration CNN (fp32, and its int8
    QDQ copy where int8 runs) equal its measured median; where the two differ, the factor
    closer to fp32 and int8 alike (their geometric mean) is kept and both are recorded in
    the source. bandwidth: a batch-1 MatMul streaming a 64 MiB weight, as a fraction of
    the copy bandwidth. The measurements use the timing protocol of builds; ``statistic``
    is what the estimate is fitted to: the median a build reports, or the fastest run
    ("min"), which other load on the machine disturbs least, over the rounds in which the machine
    was quiet (a chain of kernels split over the threads, timed last in every cycle, near its fastest
    on either side), or every round where too few were.
    """
    import tempfile

    from edgeprune.measure.graph import ONNXRUNTIME, lowered_graph
    from edgeprune.timing import MIN_QUIET_ROUNDS, Protocol, quiet_rounds, round_stats, timed_rounds

    host = host or this_host()
    threads = threads or host.cores
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
        # a virtual machine's other cores may at times not run when a kernel hands them work: at worst its
        # threads run short kernels no faster than one (seen here: a MobileNetV2 at two threads as slow as at one)
        shortest = ("fp32", DEPTHWISE_INPUTS[-1])
        one_thread = ("fp32 on one thread", DEPTHWISE_INPUTS[-1]) if host.virtual and threads > 1 else None
        for key, path in models.items():
            x_shape = STEM_INPUT if key[1] in STEMS else key[1]
            feed = {"x": np.random.default_rng(2).standard_normal(x_shape).astype(np.float32)}
            runs[key] = _run(path, threads, feed)
            if one_thread and key == shortest:  # the same chain and input on one thread, in the same rounds
                runs[one_thread] = _run(path, 1, feed)
            graphs[key] = lowered_graph(path, [x_shape], runtime=ONNXRUNTIME)  # grouped as ONNX Runtime runs it
            if key[1] not in CALIBRATION_INPUTS:  # the share of a run its products take, from ONNX Runtime's profiler
                ops = onnx_runtime.op_times_ms(path, feed, threads, max(10, int(seconds * 20)))
                # a stem's share holds the layout change before it (a real network pays it once, at its stem)
                products = PRODUCT_OPS | ({"ReorderInput", "ReorderOutput"} if key[1] in STEMS else set())
                product_share[key] = sum(v for op, v in ops.items() if op in products) / max(sum(ops.values()), 1e-9)
        # kernels split over the threads, in the same rounds: how much longer each took at times (on a VM, at
        # worst as long as on one thread); fitted to nothing, it pads estimates by a cost per kernel
        handoff, handoff_one = ("fp32", HANDOFF_INPUT), ("fp32 on one thread", HANDOFF_INPUT)
        onnx.save(handoff_model(), Path(tmp) / "handoff.onnx")
        feed = {"x": np.random.default_rng(2).standard_normal(HANDOFF_INPUT).astype(np.float32)}
        runs[handoff] = _run(Path(tmp) / "handoff.onnx", threads, feed)
        if one_thread:
            runs[handoff_one] = _run(Path(tmp) / "handoff.onnx", 1, feed)
    rounds = max(4, int(seconds * 8))
    timed = timed_rounds(runs, Protocol(warmup_s=seconds / 4, round_s=seconds / 4, min_rounds=rounds,
                                        max_rounds=2 * rounds))
    stats = {key: round_stats(r) for key, r in timed.items()}
    # the estimate is fitted to the rounds in which the machine was quiet (the hand-off chain, last in every cycle,
    # within the estimator's own bound of its fastest on either side): a slow spell that comes and goes while
    # probed would otherwise be fitted into the kernels' costs; the swing and the stall below see every round
    chain = [statistics.median(r) for r in timed[handoff]]
    quiet = quiet_rounds(chain, min(chain) * (1 + ESTIMATE_ERROR_BOUND))
    fitted = {key: round_stats([r[i] for i in quiet]) for key, r in timed.items()} if len(quiet) >= MIN_QUIET_ROUNDS else stats
    measured_ms = {key: fitted[key].min_ms if statistic == "min" else fitted[key].median_ms for key in stats}
    quiet_note = (f"fitted to the {len(quiet)} of {len(chain)} rounds in which the machine was quiet"
                  if fitted is not stats else f"fitted to every round: in only {len(quiet)} of {len(chain)} was the machine quiet")
    # the chain of the shortest kernels (depthwise on the smallest maps) feels first when the machine's cores are
    # slow to wake (a VM's vCPUs): its rounds, interleaved with every other run over the whole calibration, show
    # how much slower than its fastest the machine ran at times (on a 2-vCPU VM: 1.8x, in windows seconds apart)
    seen = 1 + max(stats[key].spread for key in graphs if key[1] == DEPTHWISE_INPUTS[-1])
    worst = stats[one_thread].median_ms / fitted[shortest].median_ms if one_thread else 1.0
    data["efficiency"]["swing"] = swing = round(max(seen, worst), 3)
    kernel_ms = [stats[handoff].spread * stats[handoff].median_ms]  # its slowest round over its fastest
    if one_thread:
        kernel_ms.append(stats[handoff_one].median_ms - fitted[handoff].median_ms)
    data["efficiency"]["stall_us"] = stall = round(max(0.0, *kernel_ms) * 1000 / HANDOFF_LAYERS, 2)
    on_one_thread = f", and on this virtual machine it ran {worst:.2f} times as long on one thread as on {threads}" \
        if one_thread else ""
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
        factors = {key: solve_efficiency(graphs[key], data, measured_ms[key], "compute") for key in cnn}
        compute = geomean(list(factors.values()))
        data["efficiency"]["compute"] = compute
        data["efficiency"]["compute_by_precision"] = {
            p: geomean([v for k, v in factors.items() if k[0] == p]) for p in dict.fromkeys(k[0] for k in factors)}
        data["efficiency"].pop("conv_output_ns_by_precision", None)
        data["efficiency"]["conv_output_ns_by_precision"] = pointwise = {
            p: fit_per_element(products(p, POINTWISE_INPUTS), data, lambda k: k.output_elements) for p in precisions}
    data["efficiency"]["shallow_conv_ns_by_precision"] = shallow = {
        p: fit_shallow(products(p, STEMS), data) for p in precisions}
    depthwise = {p: fit_depthwise(products(p, DEPTHWISE_INPUTS), data) for p in precisions}
    data["efficiency"].update(depthwise_ns_by_precision={p: a for p, (a, _) in depthwise.items()},
                              depthwise_channel_ns_by_precision={p: b for p, (_, b) in depthwise.items()})
    data["efficiency"]["elementwise_ns_by_precision"] = elementwise = {"fp32": fit_per_element(
        [(graphs[k], measured_ms[k] * (1 - share)) for k, share in product_share.items() if k[1] in BETWEEN_INPUTS],
        data, lambda k: k.elements, lambda k: k.op not in ANCHORS)}
    measured = ", ".join(f"{k[0]} {k[1][2]}x{k[1][3]} ({graphs[k].flops / 1e9:.2f} GFLOP) {measured_ms[k]:.3g} ms "
                         f"(spread {stats[k].spread:.0%}) -> {v:.3g}" for k, v in factors.items())
    stems = ", ".join(f"{k[0]} {k[1][1]}x{k[1][1]} to {k[1][0]} {measured_ms[k]:.3g} ms" for k in graphs if k[1] in STEMS)
    data["efficiency"]["source"] = (
        f"{data['efficiency']['source'].replace(UNCALIBRATED, '')}; compute {compute:g} (by precision "
        f"{', '.join(f'{p} {v:g}' for p, v in data['efficiency']['compute_by_precision'].items())}) calibrated so the roofline "
        f"estimates of a {len(CALIBRATION_CNN)}-layer 3x3-conv CNN at batch 1 match its "
        f"{'fastest run' if statistic == 'min' else 'median'} under the build timing protocol, {quiet_note} "
        f"({measured}; "
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
        f"{gemv:.1f} GB/s of a batch-1 MatMul over a 64 MiB weight / {copy_gbs:.1f} GB/s copy; swing {swing:g}: "
        f"the {DEPTHWISE_INPUTS[-1][1]}-channel {DEPTHWISE_INPUTS[-1][2]}x{DEPTHWISE_INPUTS[-1][3]} depthwise "
        f"chain's round medians spread {seen - 1:.0%} over the {stats[shortest].rounds} rounds of the calibration"
        f"{on_one_thread}; stall {stall:g} us: how much longer than when fastest each of {HANDOFF_LAYERS} 1x1 "
        f"convolutions ({HANDOFF_INPUT[1]} channels at {HANDOFF_INPUT[2]}x{HANDOFF_INPUT[3]}, split over the threads) "
        f"took at times{' (at worst: on one thread)' if one_thread else ''}"
        f"{load_note()}")
    return calibrate_decoder(data, seconds, threads) if "int4" in data["precisions"] else data


def _run(path: Path, threads: int, feed: dict):
    """Returns a call that runs the ONNX file once on ``threads`` threads (its session made now)."""
    sess = onnx_runtime.session(path, threads)
    return lambda: sess.run(None, feed)


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
