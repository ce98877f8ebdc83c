"""FLOPs of the operators a kernel is built around (and of the cheap ones between), from an indexed graph."""

from __future__ import annotations

import math

import onnx

from edgeprune.measure.graph_index import GraphIndex, attr


def anchor_flops(g: GraphIndex, node: onnx.NodeProto) -> tuple[float, int, int] | None:
    """Returns (FLOPs, reduction width, output width) of an anchor, or None if shapes are unknown."""
    op = node.op_type
    out = g.shapes.get(node.output[0])
    if op in ("Conv", "ConvInteger", "FusedConv", "QLinearConv"):
        w_name = node.input[3] if op == "QLinearConv" else node.input[1]
        w = g.shapes.get(w_name)
        if out is None or w is None:
            return None
        per_out = math.prod(w[1:])  # Cin/group x kernel
        return 2.0 * math.prod(out) * per_out, w[1] * int(attr(node, "group", 1)), w[0]
    if op == "ConvTranspose":
        x, w = g.shapes.get(node.input[0]), g.shapes.get(node.input[1])
        if x is None or w is None:
            return None
        group = int(attr(node, "group", 1))
        return 2.0 * math.prod(x) * (w[1]) * math.prod(w[2:]), w[0], w[1] * group
    if op in ("Gemm", "QGemm"):
        a_name, b_name = (node.input[0], node.input[3]) if op == "QGemm" else (node.input[0], node.input[1])
        a, b = g.shapes.get(a_name), g.shapes.get(b_name)
        if a is None or b is None:
            return None
        k = a[0] if attr(node, "transA", 0) else a[1]
        n = b[0] if attr(node, "transB", 0) else b[1]
        m = a[1] if attr(node, "transA", 0) else a[0]
        return 2.0 * m * n * k, k, n
    if op in ("MatMul", "MatMulInteger", "QLinearMatMul", "FusedMatMul", "DynamicQuantizeMatMul"):
        a_name = node.input[0]
        b_name = node.input[3] if op == "QLinearMatMul" else node.input[1]
        a, b = g.shapes.get(a_name), g.shapes.get(b_name)
        if out is None or a is None or b is None:
            return None
        k = a[-1]
        n = b[-1] if len(b) > 1 else 1
        return 2.0 * math.prod(out) * k, k, n
    if op == "MatMulNBits":
        a = g.shapes.get(node.input[0])
        k, n = int(attr(node, "K", 0)), int(attr(node, "N", 0))
        if a is None:
            return None
        return 2.0 * math.prod(a[:-1]) * k * n, k, n
    if op == "Einsum":
        return einsum_flops(g, node)
    if op in ("Attention", "MultiHeadAttention", "GroupQueryAttention"):
        return attention_flops(g, node)
    return None


def conv_window(g: GraphIndex, node: onnx.NodeProto) -> tuple[int, int, float]:
    """Returns (input channels a tap reads per group, window rows, output elements) of a convolution.

    (0, 0, 0) for anything but a one-group convolution with known shapes: grouped and
    depthwise convolutions run kernels of their own.
    """
    if node.op_type not in ("Conv", "ConvInteger", "FusedConv", "QLinearConv") or int(attr(node, "group", 1)) != 1:
        return 0, 0, 0.0
    w = g.shapes.get(node.input[3] if node.op_type == "QLinearConv" else node.input[1])
    out = g.shapes.get(node.output[0])
    if w is None or out is None or len(w) < 2:
        return 0, 0, 0.0
    return int(w[1]), int(w[2]) if len(w) > 2 else 1, float(math.prod(out))


def depthwise_extent(g: GraphIndex, node: onnx.NodeProto) -> tuple[float, float]:
    """Returns (elements, channel planes) a depthwise convolution (one input channel a group) writes; (0, 0) for any other node."""
    if node.op_type not in ("Conv", "ConvInteger", "FusedConv", "QLinearConv") or int(attr(node, "group", 1)) == 1:
        return 0.0, 0.0
    w = g.shapes.get(node.input[3] if node.op_type == "QLinearConv" else node.input[1])
    out = g.shapes.get(node.output[0])
    if w is None or out is None or len(w) < 2 or int(w[1]) != 1:
        return 0.0, 0.0
    return float(math.prod(out)), float(math.prod(out[:2]))  # planes: batch x channels


def einsum_flops(g: GraphIndex, node: onnx.NodeProto) -> tuple[float, int, int] | None:
    eq = str(attr(node, "equation", b"")).replace(" ", "")
    eq = eq[2:-1] if eq.startswith("b'") else eq
    lhs = eq.split("->")[0].split(",")
    sizes: dict[str, int] = {}
    for term, name in zip(lhs, node.input, strict=False):
        shape = g.shapes.get(name)
        if shape is None or "..." in term or len(term) != len(shape):
            return None
        sizes.update(dict(zip(term, shape, strict=True)))
    out_terms = eq.split("->")[1] if "->" in eq else ""
    reduced = [c for c in sizes if c not in out_terms]
    return 2.0 * math.prod(sizes.values()), math.prod(sizes[c] for c in reduced) if reduced else 1, 0


def attention_flops(g: GraphIndex, node: onnx.NodeProto) -> tuple[float, int, int] | None:
    q = g.shapes.get(node.input[0])
    if q is None or len(q) != 3:
        return None
    batch, seq, hidden = q
    flops = 0.0
    if node.op_type == "Attention":  # com.microsoft Attention: the QKV projection is inside
        w = g.shapes.get(node.input[1])
        if w is None:
            return None
        flops += 2.0 * batch * seq * w[0] * w[1]
        hidden = w[1] // 3
    kv = g.shapes.get(node.input[1]) if node.op_type != "Attention" and len(node.input) > 1 else None
    kv_seq = kv[1] if kv is not None and len(kv) >= 2 else seq
    flops += 4.0 * batch * seq * kv_seq * hidden  # Q K^T and softmax(.) V
    return flops, hidden, hidden


def other_flops(g: GraphIndex, node: onnx.NodeProto) -> float:
    """Returns the arithmetic of a non-matmul operator: one op per element, more for windows."""
    out = sum(g.numel(o) or 0 for o in node.output if o)
    op = node.op_type
    if op in ("MaxPool", "AveragePool", "LpPool"):
        return float(out * math.prod(attr(node, "kernel_shape", [1])))
    if op.startswith("Reduce") or op.startswith("Global") or op in ("ArgMax", "ArgMin"):
        return float(sum(g.numel(i) or 0 for i in node.input[:1] if i))
    if op in ("Softmax", "LogSoftmax", "LayerNormalization", "SimplifiedLayerNormalization",
              "SkipLayerNormalization", "InstanceNormalization", "GroupNormalization"):
        return 5.0 * out
    return float(out)
