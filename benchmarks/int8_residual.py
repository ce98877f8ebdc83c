"""int8 on a residual CNN: which activation type lets ONNX Runtime fuse the whole graph, and what it buys.

    .venv/bin/python benchmarks/int8_residual.py [--threads N] [--size 128] [--profile probed.toml]

A ResNet-18-shaped CNN (random weights, BatchNorm statistics randomized) at SIZE x SIZE, dense
and structured 0.5 (the same network at half the channels, what structured pruning yields),
each fp32 and static QDQ int8 with S8 and with U8 activations (S8 per-channel weights both).
For each int8 model the table counts the convolutions ONNX Runtime's CPU provider runs as
QLinearConv and those it leaves in fp32 behind a DequantizeLinear (its own optimized graph,
edgeprune.backends.onnx_tools.fusion), and all six models are timed side by side with the
build's timing protocol. The section of docs/benchmarks.md for this machine's kernel classes
is replaced; the rest of the file is left as it is.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

import cnn_variants  # noqa: E402
from writeup import machine, write_section  # noqa: E402

from edgeprune.backends.onnx_tools.export import export_onnx  # noqa: E402
from edgeprune.backends.onnx_tools.fusion import inspect_kernels, unfused_nodes  # noqa: E402
from edgeprune.backends.onnx_tools.quantize import Int8Config, quantize_int8  # noqa: E402
from edgeprune.host import this_host  # noqa: E402
from edgeprune.measure.estimate import estimate_onnx  # noqa: E402
from edgeprune.measure.graph import ONNXRUNTIME  # noqa: E402
from edgeprune.measure.local import measure_onnx_files  # noqa: E402
from edgeprune.profile import load_profile_file  # noqa: E402

SECTION = "## int8 on a residual CNN"


def variants(folder: Path, size: int) -> tuple[dict[str, Path], object]:
    """Returns {label: ONNX path} for the six models, and their input."""
    import torch

    paths = {}
    g = torch.Generator().manual_seed(3)
    calibration = [(torch.rand(8, 3, size, size, generator=g),) for _ in range(2)]
    for width, name in ((1.0, "dense"), (0.5, "structured 0.5")):
        model, x = cnn_variants.resnet18_model(width, size)
        fp32 = export_onnx(model, (x,), folder / f"{width}.onnx")
        paths[f"{name} fp32"] = fp32
        for activation in ("s8", "u8"):
            out = folder / f"{width}-{activation}.onnx"
            paths[f"{name} int8 {activation.upper()} activations"] = quantize_int8(
                fp32, out, calibration, Int8Config(activation=activation))
    return paths, x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads (default: all cores)")
    parser.add_argument("--size", type=int, default=128, help="input height and width")
    parser.add_argument("--profile", type=Path, default=None,
                        help="a probed profile (edgeprune profiles probe): adds the estimator's figures")
    args = parser.parse_args()
    profile = load_profile_file(args.profile) if args.profile else None
    threads = args.threads or this_host().cores
    start = time.time()
    with tempfile.TemporaryDirectory(prefix="edgeprune-int8-residual-") as tmp:
        paths, x = variants(Path(tmp), args.size)
        kernels = {k: inspect_kernels(p) for k, p in paths.items() if "int8" in k}
        stats = measure_onnx_files(paths, [x], threads)
        shape = [tuple(x.shape)]
        # as a build estimates it (what ONNX Runtime leaves unfused charged as fp32), and as if all were fused
        estimated = {} if profile is None else {
            k: (estimate_onnx(p, shape, profile, unfused=unfused_nodes(p), runtime=ONNXRUNTIME).ms,
                estimate_onnx(p, shape, profile, runtime=ONNXRUNTIME).ms)
            for k, p in paths.items()}
    fp32 = {"dense": stats["dense fp32"].median_ms, "structured 0.5": stats["structured 0.5 fp32"].median_ms}
    extra = " estimated ms (error) | estimated if all fused (error) |" if estimated else ""
    rows = ["| model | convolutions as QLinearConv / left fp32 | median ms | spread | vs dense fp32 | "
            "vs its own fp32 |" + extra, "|---|---|---|---|---|---|" + ("---|---|" if estimated else "")]
    for label, s in stats.items():
        base = "dense" if label.startswith("dense") else "structured 0.5"
        k = kernels.get(label)
        fused = "—" if k is None else f"{k.quantized.get('QLinearConv', 0)} / {k.float_ops.get('Conv', 0)}"
        cells = "".join(f" {e:.3f} ({e / s.median_ms - 1:+.0%}) |" for e in estimated.get(label, ()))
        rows.append(f"| {label} | {fused} | {s.median_ms:.3f} | {s.spread:.1%} | "
                    f"{fp32['dense'] / s.median_ms:.2f}x | {fp32[base] / s.median_ms:.2f}x |" + cells)
    host = this_host()
    text = "\n".join([
        f"{SECTION} ({host.kernel_class('fp32')} / {host.kernel_class('int8')} kernels)",
        "",
        f"`.venv/bin/python benchmarks/int8_residual.py --size {args.size}"
        + (" --profile probed.toml" if profile else "") + f"` on {machine()}, {threads} threads, "
        f"ONNX Runtime's CPU provider; a ResNet-18-shaped CNN (random weights) at {args.size}x{args.size}, "
        f"the six models timed side by side (build's protocol, medians), {time.time() - start:.0f} s in all. "
        "S8 activations leave every residual Add in fp32 (ONNX Runtime's QDQ fusion makes QLinearAdd only "
        "for U8), so each convolution after one runs in fp32 behind a DequantizeLinear; U8 activations "
        "(edgeprune's choice on x86 since this comparison) fuse the whole graph."
        + ("" if profile is None else
           f" Estimated: the roofline estimator on the probed profile {args.profile.name}, as a build estimates an "
           "ONNX artifact (layers ONNX Runtime leaves unfused charged as fp32 plus their (de)quantizations), and "
           "as it did before it asked ONNX Runtime (every Q/DQ group taken as one int8 kernel)."),
        "",
        *rows,
    ])
    write_section(f"{SECTION} ({host.kernel_class('fp32')} / {host.kernel_class('int8')} kernels)", text)
    print(text)


if __name__ == "__main__":
    main()
