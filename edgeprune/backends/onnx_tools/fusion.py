"""What ONNX Runtime actually runs: the kernels in its optimized graph of an ONNX file.

A QDQ model is only faster than fp32 when ONNX Runtime fuses each DequantizeLinear ->
Conv/MatMul -> QuantizeLinear group into an integer kernel (QLinearConv, QGemm,
MatMulIntegerToFloat, ...). An fp16 model is only fp16 where the CPU provider has fp16
kernels; elsewhere it inserts casts and computes in fp32. Both are read here from the graph
ONNX Runtime writes after optimizing, the graph the session executes.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from edgeprune.backends.onnx_tools import runtime as onnx_runtime

# Integer kernels ONNX Runtime runs for quantized Conv/MatMul/Gemm (ai.onnx and com.microsoft).
QUANTIZED_KERNELS = frozenset({
    "QLinearConv", "QLinearMatMul", "QGemm", "ConvInteger", "MatMulInteger", "DynamicQuantizeMatMul",
    "MatMulIntegerToFloat", "QAttention", "QLinearConvTranspose", "MatMulNBits",
})
# Float kernels for the same layers (including ONNX Runtime's fused and NCHWc variants).
FLOAT_KERNELS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm", "FusedConv", "FusedMatMul", "FusedGemm"})


@dataclass(frozen=True)
class KernelReport:
    """The compute kernels of ONNX Runtime's optimized graph for one file.

    quantized: integer kernels by type. float_ops: float Conv/MatMul/Gemm kernels by type.
    unfused: float kernels fed by a DequantizeLinear (a Q/DQ group ONNX Runtime did not fuse,
    so it dequantizes and runs fp32 math). fp16_ops / fp32_ops: float kernels whose weight is
    stored in fp16 / fp32 in the optimized graph.
    """

    quantized: dict[str, int] = field(default_factory=dict)
    float_ops: dict[str, int] = field(default_factory=dict)
    unfused: tuple[str, ...] = ()
    fp16_ops: int = 0
    fp32_ops: int = 0
    # every node it runs in float behind a DequantizeLinear (a Conv, an Add, a pooling): what the estimate
    # of the file charges as fp32 (see unfused_nodes)
    behind_dequantize: tuple[str, ...] = ()

    @property
    def quantized_count(self) -> int:
        return sum(self.quantized.values())

    def to_dict(self) -> dict:
        """Returns the report for report.json."""
        return {"quantized_kernels": dict(self.quantized), "float_kernels": dict(self.float_ops),
                "unfused": list(self.unfused), "fp16_kernels": self.fp16_ops, "fp32_kernels": self.fp32_ops,
                "behind_dequantize": list(self.behind_dequantize)}


def optimized_graph(path: str | Path) -> onnx.GraphProto:
    """Returns the graph ONNX Runtime's CPU provider executes for the file, after all optimizations."""
    with tempfile.TemporaryDirectory(prefix="edgeprune-ortopt-") as tmp:
        optimized = Path(tmp) / "optimized.onnx"
        onnx_runtime.session(path, threads=1, optimized_model_path=str(optimized))
        return onnx.load(str(optimized)).graph


def inspect_kernels(path: str | Path) -> KernelReport:
    """Returns the kernels ONNX Runtime's CPU provider runs for the file, after all optimizations."""
    graph = optimized_graph(path)
    producers = {out: node for node in graph.node for out in node.output}
    dtypes = {init.name: init.data_type for init in graph.initializer}
    quantized: Counter[str] = Counter()
    float_ops: Counter[str] = Counter()
    unfused: list[str] = []
    fp16 = fp32 = 0
    for node in graph.node:
        if node.op_type in QUANTIZED_KERNELS:
            quantized[node.op_type] += 1
        elif node.op_type in FLOAT_KERNELS:
            float_ops[node.op_type] += 1
            feeders = [producers.get(name) for name in node.input[:2]]
            if any(f is not None and f.op_type == "DequantizeLinear" for f in feeders):
                unfused.append(node.name or node.op_type)
            weight = next((dtypes[name] for name in node.input[1:2] if name in dtypes), None)
            if weight == onnx.TensorProto.FLOAT16:
                fp16 += 1
            elif weight == onnx.TensorProto.FLOAT:
                fp32 += 1
    behind = tuple(node.name for node in graph.node if node.name and node.op_type not in (
        "QuantizeLinear", "DequantizeLinear") and any(
        (f := producers.get(name)) is not None and f.op_type == "DequantizeLinear" for name in node.input))
    return KernelReport(dict(quantized), dict(float_ops), tuple(unfused), fp16, fp32, behind)


def unfused_nodes(path: str | Path) -> frozenset[str]:
    """Returns the names of the nodes ONNX Runtime's CPU provider runs in float behind a DequantizeLinear.

    Those are the quantized groups it did not fuse into an integer kernel (a Conv, an Add, a
    pooling): the estimator charges them as what runs, fp32 math plus the (de)quantizations.
    Empty, without a session, for a file with no DequantizeLinear.
    """
    model = onnx.load(str(path), load_external_data=False)
    if not any(node.op_type == "DequantizeLinear" for node in model.graph.node):
        return frozenset()
    return frozenset(inspect_kernels(path).behind_dequantize)


def int8_fusion_notes(report: KernelReport) -> list[str]:
    """Returns what a user must know about an int8 model's kernels (empty when all fused)."""
    if report.quantized_count == 0:
        return ["ONNX Runtime fused no quantized operator on this machine: the int8 model dequantizes "
                "and runs fp32 math (expect it to be slower than fp32, not faster)"]
    if report.unfused:
        shown = ", ".join(report.unfused[:5]) + (" ..." if len(report.unfused) > 5 else "")
        return [f"ONNX Runtime left {len(report.unfused)} quantized layer(s) unfused ({shown}): "
                "they dequantize and run in fp32"]
    return []


def fp16_notes(report: KernelReport) -> list[str]:
    """Returns a note when ONNX Runtime computes an fp16 model's layers in fp32 on this machine."""
    total = report.fp16_ops + report.fp32_ops
    if total and report.fp32_ops == total:
        return ["ONNX Runtime's CPU provider has no fp16 kernels for these layers here: it casts the fp16 "
                "weights back and computes in fp32 (the file is half the size; expect no speed-up)"]
    if report.fp32_ops:
        return [f"ONNX Runtime computes {report.fp32_ops} of {total} layers in fp32 here (no fp16 kernel)"]
    return []
