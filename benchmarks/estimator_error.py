"""The roofline estimator against ONNX Runtime on this machine, written up in docs/benchmarks.md.

    .venv/bin/python benchmarks/estimator_error.py [--threads N] [--seconds S] [--passes P] [--profile probed.toml]

Probes this machine (``edgeprune profiles probe``: measured peaks and calibrated efficiency
factors), then for the digits CNN and a ResNet-18-shaped CNN (224x224), each dense,
structured 0.5, int8 and structured 0.5 + int8, measures the median latency with the
build's timing protocol (the variants of a model side by side; every model in each of
``--passes`` passes over the set, the median of the passes reported with their range: this
host's speed drifts over minutes) and estimates it on the probed profile. A second table
holds the set kept apart from every fitting and tuning of the estimator (held_out_models.py:
a ResNet-50, a MobileNetV2, a ViT, a GPT and a BERT, each fp32 and the int8 a build would
make), measured and estimated the same way; both are reported. Beside every model, in every
pass, the probe's own calibration CNN is timed too: how its time moved since the probe says how far
the host drifted. The machine is probed again before every pass after the first, and a second error
column compares each pass with the estimate on its own probe (a profile of the machine as it ran in
those minutes). The probe's hand-off chain is timed last in every cycle of rounds: a model's round between
two of its rounds that ran near its fastest is quiet, and the bounds are judged on each row's quiet rounds
(the estimator against the host while it was quiet; over all rounds and on each pass's probe is shown
beside it). Each probe's swing (how much slower than when
fastest its machine ran a chain of short kernels) is reported, with the rows a budget judged on the
estimates could pass falsely (a pass slower than the estimate padded by the gate's margin and the
swing). The table and the machine it ran on
replace the section of docs/benchmarks.md for this machine's kernel classes
(``## Roofline estimator error (avx2 / avx2 kernels)`` on an AVX2 CPU, ``(avx512 /
avx512-vnni kernels)`` on an AVX-512 VNNI one, ...), so the figures of each class of host
stay side by side; the rest of the file is left as it is.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

import cnn_variants  # noqa: E402
import numpy as np  # noqa: E402
import onnx  # noqa: E402
import torch  # noqa: E402
from held_out_models import HELD_OUT, export_held_out  # noqa: E402
from quiet import QUIET, QUIET_TRIES, quiet_limit, quiet_runs  # noqa: E402
from writeup import machine, write_section  # noqa: E402

from edgeprune.backends.onnx_tools.fusion import unfused_nodes  # noqa: E402
from edgeprune.gate import ESTIMATE_ERROR_BOUND, Budgets  # noqa: E402
from edgeprune.host import this_host  # noqa: E402
from edgeprune.measure.estimate import estimate_onnx, estimate_swing  # noqa: E402
from edgeprune.measure.graph import ONNXRUNTIME  # noqa: E402
from edgeprune.measure.local import onnx_runs  # noqa: E402
from edgeprune.probe import probe_host, write_profile  # noqa: E402
from edgeprune.probe.bench import memory_bandwidth_gbs  # noqa: E402
from edgeprune.probe.chains import (  # noqa: E402
    CALIBRATION_INPUTS,
    HANDOFF_INPUT,
    HANDOFF_LAYERS,
    calibration_cnn,
    handoff_model,
)
from edgeprune.profile import load_profile_file  # noqa: E402
from edgeprune.timing import MIN_QUIET_ROUNDS, round_stats, timed_rounds  # noqa: E402

SECTION = "## Roofline estimator error"
BOUND = 0.20
HELD_OUT_BOUND = ESTIMATE_ERROR_BOUND  # what the gate's default margin covers
REFERENCE = "reference"  # the probe's calibration CNN, timed beside each model
HANDOFF = "handoff"  # the probe's hand-off chain (1x1 convolutions split over the threads), timed beside each model
HEADER = ("| model | variant | GFLOP | fused kernels | measured ms (passes' range) | speed-up | estimated ms | error "
          "| host | error on each pass's own probe | stall beside (us) | quiet ms (rounds) | error quiet |")
RULE = "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
MODELS = {"digits": "digits CNN (32x32, 64/128/256 channels)", "resnet": "ResNet-18-shaped CNN (224x224)"}


def cpu_busy_seconds() -> float | None:
    """Returns the seconds all CPUs of the machine have been busy since boot (from /proc/stat)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq = (int(v) for v in fields[:7])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """Returns the CPU seconds this process and its finished children have used."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def run(threads: int | None, seconds: float, profile_path: Path | None, workdir: Path,
        passes: int) -> tuple[list[dict], dict]:
    """Returns the table rows and what was probed.

    Every model is timed in each of ``passes`` passes over the whole set (a model's variants side by
    side each time); a row's measurement is the median of its passes' medians, and ``passes_ms`` their
    range: minutes apart on a shared host, they show how much its speed drifted. The machine is probed
    again before every pass after the first (unless a profile is given), and each pass's measurements
    are also estimated on its own probe: ``error_probed`` is the estimator's error with a profile of the
    machine as it ran in those minutes.
    """
    def probe(name: str) -> Path:
        return write_profile(probe_host(name=name, seconds=seconds, threads=threads), workdir / f"{name}.toml")

    reprobe = profile_path is None
    profile_path = profile_path or probe("probed-bench")
    profile = load_profile_file(profile_path)
    exports = [(m, False, lambda m=m: cnn_variants.export_variants(m, workdir / m)) for m in MODELS]
    exports += [(m, True, lambda m=m: export_held_out(m, workdir / m, profile)) for m in HELD_OUT]
    models = [(model, held_out, *export()) for model, held_out, export in exports]
    # the probe's own calibration CNN, timed beside every model: its estimate was fitted to its time when probed,
    # so its measured/estimated ratio beside a model says how much slower or faster the host runs now than then
    reference = workdir / "reference.onnx"
    onnx.save(calibration_cnn(CALIBRATION_INPUTS[0]), reference)
    reference_est = estimate_onnx(reference, [CALIBRATION_INPUTS[0]], profile, runtime=ONNXRUNTIME).ms
    onnx.save(handoff_model(), workdir / "handoff.onnx")
    handoff_ms: dict[str, list[float]] = {}  # per model, per pass: the hand-off chain's median beside it
    handoff_rounds: dict[str, list[list[float]]] = {}  # per model, per pass: the chain's round medians beside it
    timed: dict[tuple[str, str], list] = {}
    row_rounds: dict[tuple[str, str], list] = {}  # per row, per pass: its rounds' run times
    drift: dict[str, list[float]] = {}  # per model, per pass: the reference's measured / estimated ms
    gauges = []  # the host's memory bandwidth before each pass and after the last: how far it drifted
    pass_profiles = []  # the profile each pass's measurements are estimated on too
    for i in range(passes):
        pass_profiles.append(load_profile_file(probe(f"probed-pass{i}")) if reprobe and i else profile)
        gauges.append(memory_bandwidth_gbs(1.0))
        for model, _held, paths, x in models:
            rounds = time_beside_reference(paths, x, reference, workdir / "handoff.onnx", threads)
            drift.setdefault(model, []).append(round_stats(rounds.pop(REFERENCE)).median_ms / reference_est)
            chain = rounds.pop(HANDOFF)
            handoff_ms.setdefault(model, []).append(round_stats(chain).median_ms)
            handoff_rounds.setdefault(model, []).append([statistics.median(r) for r in chain])
            for variant, variant_rounds in rounds.items():
                timed.setdefault((model, variant), []).append(round_stats(variant_rounds))
                row_rounds.setdefault((model, variant), []).append(variant_rounds)
    gauges.append(memory_bandwidth_gbs(1.0))
    # a model with too few quiet rounds (the host in a slow spell through its passes) is timed again, in turn with
    # the others (a spell lasts seconds to minutes), up to QUIET_TRIES times, for its quiet rounds only (its other
    # columns keep the passes')
    retimed: dict[str, int] = {}
    for _ in range(QUIET_TRIES):
        for model, _held, paths, x in models:
            if all(len(quiet_runs(row_rounds[(model, v)], handoff_rounds[model], quiet_limit(handoff_rounds))[0])
                   >= MIN_QUIET_ROUNDS for v in paths):
                continue
            retimed[model] = retimed.get(model, 0) + 1
            rounds = time_beside_reference(paths, x, reference, workdir / "handoff.onnx", threads)
            rounds.pop(REFERENCE)
            handoff_rounds[model].append([statistics.median(r) for r in rounds.pop(HANDOFF)])
            for variant, variant_rounds in rounds.items():
                row_rounds[(model, variant)].append(variant_rounds)
    # how much longer than at its fastest in this run each hand-off kernel took beside a model, in ms
    fastest = min(min(v) for v in handoff_ms.values())
    stalls = {m: [max(0.0, v - fastest) / HANDOFF_LAYERS for v in ms] for m, ms in handoff_ms.items()}
    quiet_ms = quiet_limit(handoff_rounds)
    rows = []
    for model, held_out, paths, x in models:
        for variant, path in paths.items():
            # as a build estimates an ONNX artifact: grouped as ONNX Runtime fuses, its unfused layers as fp32
            unfused = unfused_nodes(path)
            est = estimate_onnx(path, [tuple(x.shape)], profile, unfused=unfused, runtime=ONNXRUNTIME)
            per_pass = [s.median_ms for s in timed[(model, variant)]]
            medians = sorted(per_pass)
            measured = statistics.median(medians)
            # each pass's median against the estimate on the probe taken just before that pass
            probed_pass = statistics.median(
                estimate_onnx(path, [tuple(x.shape)], pp, unfused=unfused, runtime=ONNXRUNTIME).ms / m
                for pp, m in zip(pass_profiles, per_pass, strict=True)) - 1
            quiet, total = quiet_runs(row_rounds[(model, variant)], handoff_rounds[model], quiet_ms)
            quiet_measured = statistics.median(t for r in quiet for t in r) if len(quiet) >= MIN_QUIET_ROUNDS else None
            rows.append({"model": model, "variant": variant, "gflops": est.flops / 1e9, "kernels": len(est.kernels),
                         "unfused": est.unfused_layers, "measured_ms": measured,
                         "passes_ms": (medians[0], medians[-1]), "host": statistics.median(drift[model]),
                         "estimated_ms": est.ms, "error": est.ms / measured - 1, "error_probed": probed_pass,
                         "stall_us": statistics.median(stalls[model]) * 1000, "quiet_ms": quiet_measured,
                         "quiet_rounds": (len(quiet), total),
                         "error_quiet": None if quiet_measured is None else est.ms / quiet_measured - 1,
                         "held_out": held_out})
    return rows, {"profile": profile, "path": profile_path, "gauges": gauges, "reprobed": reprobe,
                  "retimed": retimed, "quiet_ms": quiet_ms,
                  "swings": [pp.efficiency.swing for pp in pass_profiles], "profiles": pass_profiles,
                  "stalls": [pp.efficiency.stall_us for pp in pass_profiles]}


def time_beside_reference(paths: dict[str, Path], x, reference: Path, handoff: Path, threads: int | None) -> dict:
    """Returns the run times, round by round, of a model's variants, the reference CNN and the hand-off chain,
    timed side by side with the build's protocol (the hand-off chain last in every cycle of rounds)."""
    def feed(shape):
        return [torch.from_numpy(np.random.default_rng(2).standard_normal(shape).astype(np.float32))]
    return timed_rounds(onnx_runs({**paths, REFERENCE: reference, HANDOFF: handoff}, [x], threads,
                                  other_inputs={REFERENCE: feed(CALIBRATION_INPUTS[0]), HANDOFF: feed(HANDOFF_INPUT)}))


def quiet_cell(row: dict) -> str:
    """Returns a row's quiet measurement as a table cell."""
    quiet, total = row["quiet_rounds"]
    return f"{row['quiet_ms']:.3f} ({quiet} of {total})" if row["quiet_ms"] is not None else f"none ({quiet} of {total})"


def quiet_error_cell(row: dict, bound: float) -> str:
    """Returns a row's error on its quiet measurement as a table cell, marked where over the bound."""
    if row["error_quiet"] is None:
        return "**no quiet rounds**"
    return f"{row['error_quiet']:+.0%}" + ("" if abs(row["error_quiet"]) <= bound else f" **over {bound:.0%}**")


def worst_quiet(rows: list[dict]) -> str:
    """Returns the largest error on the rows' quiet measurements ('no quiet rounds' where a row had none)."""
    if any(r["error_quiet"] is None for r in rows):
        return "none: a row had no quiet rounds"
    return f"{max(abs(r['error_quiet']) for r in rows):.0%}"


def within_quiet(rows: list[dict], bound: float) -> int:
    """Returns how many rows are within the bound on their quiet measurement."""
    return sum(r["error_quiet"] is not None and abs(r["error_quiet"]) <= bound for r in rows)


def section_heading() -> str:
    """Returns this machine's section heading: the estimator's error differs by kernel class."""
    host = this_host()
    return f"{SECTION} ({host.kernel_class('fp32')} / {host.kernel_class('int8')} kernels)"


def render(rows: list[dict], probed: dict, threads: int, passes: int, load: tuple[str, str], took: float, command: str,
           others: float | None) -> str:
    """Returns the Markdown section."""
    p = probed["profile"]
    dense = {r["model"]: r["measured_ms"] for r in rows if r["variant"] in ("dense", "fp32")}
    e = p.efficiency
    fitted = [r for r in rows if not r.get("held_out")]
    held = [r for r in rows if r.get("held_out")]
    worst = max(abs(r["error"]) for r in fitted)
    names = {**MODELS, **HELD_OUT}
    shallow = "; ".join(f"{p} {a:g} ns per output + {b:g} ns per output pixel and window row"
                        for p, (a, b) in e.shallow_conv_ns_by_precision.items()) or "not fitted"
    pointwise = "; ".join(f"{p} {v:g} ns per output" for p, v in e.conv_output_ns_by_precision.items()) or "not fitted"
    depthwise = "; ".join(f"{p} {v:g} ns per output + {e.depthwise_channel_ns_by_precision.get(p, 0.0):g} ns per channel"
                          for p, v in e.depthwise_ns_by_precision.items()) or "not fitted"
    lines = [
        section_heading(), "",
        f"Machine: {machine()}; ONNX Runtime CPU provider, {threads} thread(s), batch 1. "
        f"Load average before / after: {load[0]} / {load[1]}"
        + (f"; other processes kept {others:.0%} of the CPUs busy during the run" if others is not None else "")
        + f"; {took:.0f} s in all.",
        "",
        f"Probed profile (`edgeprune profiles probe`): fp32 {p.compute['fp32'].dense_tops * 1e3:.1f} GFLOP/s, "
        f"int8 {p.compute['int8'].dense_tops * 1e3:.1f} GOP/s, {p.memory_bandwidth_gbs.value:.1f} GB/s; "
        f"efficiency compute {e.compute:g}, bandwidth {e.bandwidth:g}, {e.layer_overhead_us:g} us per kernel. "
        "Memory bandwidth timed again before each pass and after the last: "
        + ", ".join(f"{g:.1f}" for g in probed["gauges"]) + " GB/s.",
        "",
        f"Kernel classes of this machine: fp32 `{p.kernel_class('fp32')}`, int8 `{p.kernel_class('int8')}`. "
        f"Measured: the build's timing protocol, the variants of a model timed side by side, in {passes} pass(es) over "
        "the whole set minutes apart; a row gives the median of its passes' medians and their range "
        "(speed-up: the dense median over the variant's, from the same run). "
        "Estimated: the roofline estimator on the probed profile, over the lowered ONNX graph. "
        "Structured 0.5 is the same network with half the channels; int8 is ONNX Runtime static QDQ "
        "(U8 activations, S8 per-channel weights).",
        "",
        "Host: the probe's own calibration CNN (7 layers of 3x3 convolutions at 64x64, fp32) is timed side by side "
        "with every model in every pass; its measured over estimated time says how much slower (above 1) or faster "
        "the host ran then than when first probed (the median over the passes). "
        + ("The machine is probed again before every pass after the first, and the last column compares each pass's "
           "median with the estimate on the probe taken just before it (the median over the passes): the estimator's "
           "error with a profile of the machine as it ran in those minutes, as a device of its own would be profiled. "
           if probed["reprobed"] else "The last column is the median of the passes' errors on the given profile. ")
        + "The probe's hand-off chain "
        f"({HANDOFF_LAYERS} 1x1 convolutions, {HANDOFF_INPUT[1]} channels at {HANDOFF_INPUT[2]}x{HANDOFF_INPUT[3]}, "
        "each split over the threads) is timed beside every model too, last in every cycle of rounds: 'stall beside' "
        "is how much longer than at its fastest in this run each of its kernels took then (the median over the "
        "passes). A round of a model is quiet when the chain's rounds on either side of it ran within "
        f"{QUIET:.0%} of the chain's fastest round in the run (in the host's slow spells it runs half as slow again "
        "or more); 'quiet ms' is the median of a row's runs in its quiet rounds (how many of its rounds were quiet), "
        f"none when fewer than {MIN_QUIET_ROUNDS}. **The bounds are judged on the last column**, the estimate "
        "against the model's time on the host while it was quiet, as the estimator would be judged on a quiet "
        "machine; the error over all rounds and on each pass's own probe are shown beside it, and the gate's "
        "padding (below) is judged against every pass.",
        "",
        HEADER, RULE,
    ]
    def table(chosen: list[dict], bound: float) -> list[str]:
        out = []
        for r in chosen:
            mark = "" if abs(r["error"]) <= bound else f" **over {bound:.0%}**"
            out.append(f"| {names[r['model']]} | {r['variant']} | {r['gflops']:.3f} | {r['kernels']} | "
                       f"{r['measured_ms']:.3f} ({r['passes_ms'][0]:.3f}-{r['passes_ms'][1]:.3f}) | {dense[r['model']] / r['measured_ms']:.2f}x | "
                       f"{r['estimated_ms']:.3f} | {r['error']:+.0%}{mark} | {r['host']:.2f} | {r['error_probed']:+.0%}"
                       + ("" if abs(r["error_probed"]) <= bound else f" **over {bound:.0%}**")
                       + f" | {r['stall_us']:.1f} | {quiet_cell(r)} | {quiet_error_cell(r, bound)} |")
        return out

    lines += table(fitted, BOUND)
    if held:
        held_worst = max(abs(r["error"]) for r in held)
        lines += ["", f"Held apart (never fitted to nor tuned on; bound {HELD_OUT_BOUND:.0%}); int8 is what a build "
                  "makes for the profile: static QDQ (U8 activations) for the CNNs, dynamic int8 MatMuls for the "
                  "transformers; layers ONNX Runtime leaves unfused are charged as fp32 "
                  f"({sum(r['unfused'] for r in held)} such layers in this set):", "",
                  HEADER, RULE, *table(held, HELD_OUT_BOUND), "",
                  f"Largest error on the held-apart set while the host was quiet (judged): {worst_quiet(held)} "
                  f"({within_quiet(held, HELD_OUT_BOUND)} of {len(held)} within {HELD_OUT_BOUND:.0%}); over all "
                  f"rounds {held_worst:.0%} ({sum(abs(r['error']) <= HELD_OUT_BOUND for r in held)} of {len(held)} "
                  f"within); on each pass's own probe {max(abs(r['error_probed']) for r in held):.0%} "
                  f"({sum(abs(r['error_probed']) <= HELD_OUT_BOUND for r in held)} of {len(held)} within)."]
    retimed = ", ".join(f"{names[m]} {n} time(s)" for m, n in probed["retimed"].items())
    fits = [re.search(r"fitted to (the \d+ of \d+ rounds|every round: in only \d+ of \d+)", pp.efficiency.source)
            for pp in probed["profiles"]]
    lines += ["", f"Quiet: a hand-off chain round within {probed['quiet_ms']:.3f} ms on either side of a model's round "
              f"(its fastest in the run x {1 + QUIET:g}). Timed again for quiet rounds, after the passes (counted in "
              f"the rounds column only): {retimed or 'none'}. The probes fitted the estimator to the rounds of their "
              "calibration in which the machine was quiet, the same way: "
              + ", ".join(("to " + f[1].replace("the ", "", 1) if f[1].startswith("the") else
                           f"to every round ({f[1].split('only ')[1]} quiet)") if f else "not said" for f in fits) + "."]
    # what the gate promises: a budget passes on an estimate only if estimate x (1 + margin) x (1 + its spread) is
    # within it, the spread the probe's stall for each of its kernels, up to its swing
    margin = Budgets().estimate_margin
    padded = {id(r): (1 + margin) * (1 + (estimate_swing(p, r["kernels"], r["estimated_ms"])[0] or 0)) for r in rows}
    false_pass = [f"{names[r['model']]} {r['variant']} ({r['passes_ms'][1]:.3f} ms > "
                  f"{r['estimated_ms'] * padded[id(r)]:.3f})"
                  for r in rows if r["passes_ms"][1] > r["estimated_ms"] * padded[id(r)]]  # its slowest pass
    lines += [
        "",
        f"Swing (how much slower than when fastest the probe's chain of its shortest kernels ran, over its "
        f"calibration's rounds): {e.swing:g} on the first probe"
        + (", " + ", ".join(f"{w:g}" for w in probed["swings"][1:]) + " on the later passes' probes"
           if len(probed["swings"]) > 1 else "")
        + f"; stall (how much longer than when fastest each of its hand-off chain's kernels took, at worst as on "
        f"one thread on a VM): {e.stall_us if e.stall_us is not None else 'not timed'} us on the first probe"
        + (", " + ", ".join(f"{w:g}" for w in probed["stalls"][1:]) + " on the later passes' probes"
           if len(probed["stalls"]) > 1 else "")
        + f". A budget judged on these estimates passes only if the estimate x (1 + {margin:.0%}, the gate's margin) "
        "x (1 + its spread: the stall for each of its kernels, up to the swing) is within it: here x "
        f"{min(padded.values()):.2f} to x {max(padded.values()):.2f} on the first probe; rows with a pass slower "
        f"than that, which such a budget could pass falsely: "
        + (", ".join(false_pass) if false_pass else "none") + ".",
        "",
        f"Largest error on the fitted models while the host was quiet (judged): {worst_quiet(fitted)} "
        f"({within_quiet(fitted, BOUND)} of {len(fitted)} within {BOUND:.0%}); over all rounds {worst:.0%}, on each "
        f"pass's own probe {max(abs(r['error_probed']) for r in fitted):.0%}. The efficiency factors are calibrated by the probe on its "
        "own 7-layer 3x3-conv CNN at 64x64 and 192x192 inputs, one factor per precision (the geometric mean "
        "over the two sizes), with int8 kernels' own fixed cost from a chain of tiny QLinearConvs, and the "
        "per-output cost of every convolution fitted to chains of 1x1 convolutions of its own (16 channels at "
        f"80x80 and 32 at 40x40, expanded six times; here {pointwise}), of depthwise ones to chains of 3x3 "
        f"depthwise convolutions (64 channels at 112x112, 256 at 28x28 and 960 at 5x5; here {depthwise}), of shallow convolutions (an image's first layer) to two RGB "
        f"stems of its own (3x3 to 32 and 5x5 to 16 channels; here {shallow}), and the per-element cost of the "
        "operators between a transformer's products to two encoder layers of its own (width 256, 4 heads, 64 and "
        f"256 tokens; here {', '.join(f'{q} {v:g} ns per element' for q, v in e.elementwise_ns_by_precision.items()) or 'not fitted'}), "
        "each to the share of the run ONNX Runtime's profiler gives the kernels it describes; not on these models. "
        "Every graph is grouped into kernels as ONNX Runtime fuses it.",
        "",
        f"Reproduce: `{command}`",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="runtime threads (default: all cores)")
    parser.add_argument("--seconds", type=float, default=2.0, help="time per probe micro-benchmark")
    parser.add_argument("--passes", type=int, default=3, help="passes over the models, each timing all of them")
    parser.add_argument("--profile", type=Path, default=None, help="use this probed profile instead of probing")
    parser.add_argument("--doc", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--no-write", action="store_true", help="print the section, do not write the doc")
    args = parser.parse_args()
    if args.passes < 1:
        parser.error("--passes must be at least 1")
    threads = args.threads or this_host().cores
    command = "python benchmarks/estimator_error.py" + (f" --threads {args.threads}" if args.threads else "") \
        + (f" --passes {args.passes}" if args.passes != parser.get_default("passes") else "") \
        + (f" --seconds {args.seconds:g}" if args.seconds != parser.get_default("seconds") else "")
    before = " ".join(Path("/proc/loadavg").read_text().split()[:3]) if Path("/proc/loadavg").exists() else "n/a"
    start, busy0, own0 = time.perf_counter(), cpu_busy_seconds(), own_cpu_seconds()
    with tempfile.TemporaryDirectory(prefix="edgeprune-bench-") as tmp:
        rows, probed = run(args.threads, args.seconds, args.profile, Path(tmp), args.passes)
        took, busy1, own1 = time.perf_counter() - start, cpu_busy_seconds(), own_cpu_seconds()
        after = " ".join(Path("/proc/loadavg").read_text().split()[:3]) if Path("/proc/loadavg").exists() else "n/a"
        # Busy CPU time that was not ours: how much other load the measurements shared the machine with.
        others = None if busy0 is None or busy1 is None else max(0.0, (busy1 - busy0) - (own1 - own0)) / (
            took * (os.cpu_count() or 1))
        section = render(rows, probed, threads, args.passes, (before, after), took, command, others)
    print(section)
    if not args.no_write:
        write_section(section_heading(), section, args.doc)
        print(f"wrote the section into {args.doc}", file=sys.stderr)


if __name__ == "__main__":
    main()
