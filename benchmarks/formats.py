"""Sizes, accuracy and latency of the digits CNN in every format and precision edgeprune lowers to.

Writes the section "## Formats and precisions (digits)" of docs/benchmarks.md (creating
the file if needed, leaving every other section as it is) and prints the table.

    .venv/bin/python benchmarks/formats.py            # about 5 minutes on two cores
    .venv/bin/python benchmarks/formats.py --quick    # shorter latency protocol

ONNX artifacts are timed here with ONNX Runtime, side by side with the dense fp32 baseline
in one interleaved run, so the speed-ups hold even on a busy machine. Core ML packages run
only on Apple hardware and TensorRT engines only on an NVIDIA GPU: their rows give sizes
and how they were verified, and no latency (the roofline estimator will fill it in).
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from writeup import machine, write_section  # noqa: E402

import edgeprune  # noqa: E402
from edgeprune.backends import LowerRequest, get_backend  # noqa: E402
from edgeprune.backends.tensorrt.engine import tensorrt_unavailable  # noqa: E402
from edgeprune.measure.local import measure_onnx_files  # noqa: E402
from edgeprune.profile import load_profile  # noqa: E402
from edgeprune.timing import Protocol  # noqa: E402
from edgeprune.verify import verify_numeric  # noqa: E402

DOC = ROOT / "docs" / "benchmarks.md"
SECTION = "## Formats and precisions (digits)"


def magnitude_prune(model: torch.nn.Module, sparsity: float) -> torch.nn.Module:
    """Returns a copy with the smallest ``sparsity`` of each Conv/Linear weight zeroed (no recovery)."""
    import copy

    pruned = copy.deepcopy(model)
    with torch.no_grad():
        for m in pruned.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) and m.weight.shape[1] >= 4:
                threshold = m.weight.abs().flatten().kthvalue(int(m.weight.numel() * sparsity)).values
                m.weight.mul_(m.weight.abs() > threshold)
    return pruned.eval()


def run(quick: bool) -> list[dict]:
    """Returns one row per format x precision: size, verification, accuracy, latency."""
    workload = edgeprune.load_workload(str(ROOT / "examples" / "digits_cnn.py"))
    model, inputs, calib = workload.model, tuple(workload.example_inputs), workload.calibration_batches()
    with torch.no_grad():
        baseline_acc = float(workload.evaluate(model))
    pruned = magnitude_prune(model, 0.8)
    iphone = load_profile("iphone-15-pro")
    ios18 = iphone.model_copy(update={"name": "iphone-ios18", "min_deployment_target": "iOS18"})
    cases = [
        ("onnx", "fp32", model, LowerRequest("fp32", load_profile("x86-avx2"), calib)),
        ("onnx", "fp16", model, LowerRequest("fp16", load_profile("x86-avx2"), calib)),
        ("onnx", "int8", model, LowerRequest("int8", load_profile("x86-avx2"), calib)),
        ("coreml", "fp16", model, LowerRequest("fp16", iphone, calib)),
        ("coreml", "int8 weights", model, LowerRequest("int8", iphone, calib)),
        ("coreml", "8-bit palettized", model, LowerRequest("fp16", iphone, calib, palettize=8)),
        ("coreml", "6-bit palettized", model, LowerRequest("fp16", iphone, calib, palettize=6)),
        ("coreml", "4-bit palettized", model, LowerRequest("fp16", iphone, calib, palettize=4)),
        ("coreml", "fp16, 80% unstructured, sparse", pruned, LowerRequest("fp16", iphone, calib, sparsity="unstructured")),
        ("coreml", "80% sparse + 4-bit palettized (iOS18)", pruned,
         LowerRequest("fp16", ios18, calib, sparsity="unstructured", palettize=4)),
        ("tensorrt", "fp32", model, LowerRequest("fp32", load_profile("jetson-orin-nano"), calib)),
        ("tensorrt", "fp16", model, LowerRequest("fp16", load_profile("jetson-orin-nano"), calib)),
        ("tensorrt", "int8", model, LowerRequest("int8", load_profile("jetson-orin-nano"), calib)),
    ]
    rows: list[dict] = []
    timed: dict[str, Path] = {}
    with tempfile.TemporaryDirectory(prefix="edgeprune-bench-") as tmp:
        for i, (fmt, label, net, request) in enumerate(cases):
            backend = get_backend(fmt)
            backend.check(request)
            folder = Path(tmp) / f"{i}-{fmt}"
            folder.mkdir()
            start = time.perf_counter()
            artifact = backend.lower(net, inputs, request, folder)
            row = {"format": fmt, "label": label, "size": artifact.size_bytes, "lower_s": time.perf_counter() - start}
            predict = backend.predictor(artifact)
            if predict is None:
                check = backend.verify_structure(artifact, net, request)
                row.update(verified=f"structural, {'passed' if check.passed else 'FAILED'}", accuracy=None,
                           evaluated_on=backend.cannot_run_reason())
            else:
                check = verify_numeric(net, predict, calib, artifact.tolerance or request.precision,
                                       subject=artifact.evaluated_on)
                with torch.no_grad():
                    acc = float(workload.evaluate(predict))
                row.update(verified=f"numeric, {'passed' if check.passed else 'FAILED'} (rel. diff {check.rel_diff:.1e})",
                           accuracy=acc, evaluated_on=artifact.evaluated_on)
            if artifact.measure_path is not None:
                timed[f"{fmt} {label}"] = Path(tmp) / f"timed-{i}.onnx"
                timed[f"{fmt} {label}"].write_bytes(artifact.measure_path.read_bytes())
            rows.append(row)
            print(f"lowered {fmt} {label}: {row['size']:,} bytes, {row['verified']}", flush=True)
        protocol = Protocol.quick() if quick else Protocol(round_s=0.4, min_rounds=6, max_rounds=20)
        stats = measure_onnx_files(timed, inputs, protocol=protocol)
    base = stats["onnx fp32"].median_ms
    for row in rows:
        s = stats.get(f"{row['format']} {row['label']}")
        row["latency"] = s
        row["speedup"] = base / s.median_ms if s else None
        row["drop"] = baseline_acc - row["accuracy"] if row["accuracy"] is not None else None
    rows.insert(0, {"baseline_accuracy": baseline_acc})
    return rows


def render(rows: list[dict], command: str) -> str:
    """Returns the Markdown section."""
    import coremltools
    import onnxruntime

    baseline = rows[0]["baseline_accuracy"]
    fp32 = next(r for r in rows[1:] if r["format"] == "onnx" and r["label"] == "fp32")["size"]
    trt = tensorrt_unavailable()
    lines = [
        SECTION, "",
        f"Machine: {machine()}; torch {torch.__version__}, "
        f"ONNX Runtime {onnxruntime.__version__}, coremltools {coremltools.__version__}. "
        f"Measured {dt.date.today().isoformat()} with `{command}`.", "",
        f"The dense PyTorch model scores {baseline:.4f} on the 450 test digits. Latency is the median at batch 1 "
        "with ONNX Runtime's CPU provider on all cores, every ONNX artifact timed side by side with the dense fp32 "
        "baseline in one interleaved run (the machine is shared: compare the speed-ups, not the milliseconds). "
        "The 80% sparse rows prune the trained model by weight magnitude without recovery, to show storage.", "",
        "| format | precision / weights | size (bytes) | vs ONNX fp32 | verified | accuracy (drop) | latency median ms (p90) | speed-up vs dense fp32 |",
        "|---|---|---:|---:|---|---|---:|---:|",
    ]
    for r in rows[1:]:
        if r["accuracy"] is None:
            acc = "not run here"
        else:
            where = "" if r["evaluated_on"] == "artifact" else " ‡"
            acc = f"{r['accuracy']:.4f} ({r['drop']:+.4f}){where}"
        if r["latency"] is not None:
            lat = f"{r['latency'].median_ms:.2f} ({r['latency'].p90_ms:.2f})"
            speed = f"{r['speedup']:.2f}x"
        else:
            lat, speed = ("not measured †", "—")
        lines.append(f"| {r['format']} | {r['label']} | {r['size']:,} | {r['size'] / fp32:.2f} | {r['verified']} "
                     f"| {acc} | {lat} | {speed} |")
    lines += [
        "",
        "† Core ML runs only on Apple hardware; TensorRT engines are built on the device"
        + (f"; here, {trt}" if trt else "") + ". Their latency is left to the roofline estimator "
        "(`estimated`), never reported as measured from another machine.",
        "‡ TensorRT rows: accuracy of the bundle's ONNX under ONNX Runtime with Q/DQ unfused (the reference "
        "math the engine implements); `edgeprune trt-build` verifies the engine itself on the device.",
        "",
        "Notes: ONNX fp16 halves the file but ONNX Runtime has no fp16 convolution kernels on this CPU "
        "(AVX2, no AVX-512 FP16), so it casts back and computes in fp32. ONNX int8 is static QDQ with U8 "
        "activations, S8 per-channel 7-bit weights (no VNNI), fused by ONNX Runtime into QLinearConv/QGemm.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter latency protocol")
    args = parser.parse_args()
    command = "python benchmarks/formats.py" + (" --quick" if args.quick else "")
    section = render(run(args.quick), command)
    write_section(SECTION, section)
    print(section)


if __name__ == "__main__":
    main()
