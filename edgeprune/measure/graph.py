"""A lowered ONNX graph as the fused kernels a runtime executes, each with FLOPs and bytes.

Runtimes do not run ONNX nodes one by one: ONNX Runtime and TensorRT fold constants, fold
BatchNormalization into the convolution before it, run an activation (and a residual Add)
inside the convolution's kernel, and turn QuantizeLinear/DequantizeLinear pairs around an
operator into one int8 operator. The roofline estimator and the memory estimate both need
the graph as those fused kernels, so the grouping lives here once.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

# Operators that do the arithmetic of a layer: a fused kernel is built around one of them.
ANCHORS = frozenset({
    "Conv", "ConvTranspose", "Gemm", "MatMul", "QLinearConv", "QLinearMatMul", "ConvInteger",
    "MatMulInteger", "Einsum", "Attention", "MultiHeadAttention", "GroupQueryAttention",
    "FusedConv", "FusedMatMul", "QGemm", "DynamicQuantizeMatMul", "MatMulNBits",
})
# Operators that runtimes run inside the kernel of the anchor before them (no launch, no
# round trip of the activation through memory).
EPILOGUES = frozenset({
    "BatchNormalization", "Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid", "Tanh",
    "HardSwish", "Gelu", "FastGelu", "QuickGelu", "Add", "PRelu", "Elu", "Selu", "Softplus",
})
# Operators that change how a tensor is viewed, not its data: no kernel of their own.
VIEWS = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Dropout"})
# Operators whose output is known once input shapes are fixed: folded before running.
SHAPE_ONLY = frozenset({"Shape", "Size", "Constant", "ConstantOfShape"})
QUANTIZED_ANCHORS = frozenset({"QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "QGemm",
                               "DynamicQuantizeMatMul", "MatMulNBits"})

_ITEMSIZE = {
    TensorProto.FLOAT: 4, TensorProto.FLOAT16: 2, TensorProto.BFLOAT16: 2, TensorProto.DOUBLE: 8,
    TensorProto.INT8: 1, TensorProto.UINT8: 1, TensorProto.INT16: 2, TensorProto.UINT16: 2,
    TensorProto.INT32: 4, TensorProto.UINT32: 4, TensorProto.INT64: 8, TensorProto.UINT64: 8,
    TensorProto.BOOL: 1, TensorProto.INT4: 0.5, TensorProto.UINT4: 0.5,
    TensorProto.FLOAT8E4M3FN: 1, TensorProto.FLOAT8E5M2: 1,
}
_PRECISION = {TensorProto.FLOAT16: "fp16", TensorProto.BFLOAT16: "fp16", TensorProto.INT8: "int8",
              TensorProto.UINT8: "int8", TensorProto.INT4: "int8", TensorProto.UINT4: "int8"}


@dataclass(frozen=True)
class WeightInfo:
    """A weight tensor a kernel reads: stored bytes, shape, and its zero pattern."""

    bytes: float
    shape: tuple[int, ...]
    zero_fraction: float
    nm: tuple[int, int] | None  # the finest N:M pattern it satisfies along its reduction axis


@dataclass
class Kernel:
    """One fused kernel: the ONNX nodes it covers, its arithmetic and the bytes it moves.

    flops counts a multiply-accumulate as 2. weight_bytes are at the stored precision
    (an int8 initializer behind a DequantizeLinear is 1 byte an element). activation_bytes
    are the kernel's inputs read and outputs written; tensors inside the fused kernel stay
    in registers and count nothing.
    """

    name: str
    op: str
    ops: list[str]
    precision: str
    flops: float = 0.0
    weight_bytes: float = 0.0
    activation_bytes: float = 0.0
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    weights: list[WeightInfo] = field(default_factory=list)
    in_channels: int = 0
    out_channels: int = 0
    view: bool = False  # a reshape-like kernel: aliases its input, costs nothing
    unknown_shape: bool = False

    @property
    def is_matmul_like(self) -> bool:
        return self.op in ANCHORS


@dataclass(frozen=True)
class LoweredGraph:
    """The graph as kernels in execution order, plus the sizes of every tensor."""

    kernels: list[Kernel]
    tensor_bytes: dict[str, float]
    weight_bytes: float
    graph_inputs: list[str]
    graph_outputs: list[str]

    @property
    def flops(self) -> float:
        return sum(k.flops for k in self.kernels)

    @property
    def launched(self) -> list[Kernel]:
        """Returns the kernels that cost a launch (views and folded constants do not)."""
        return [k for k in self.kernels if not k.view]


def load_model(model: str | Path | onnx.ModelProto) -> onnx.ModelProto:
    """Returns the ModelProto for a path or a model (a path is read with its external data)."""
    if isinstance(model, onnx.ModelProto):
        return model
    return onnx.load(str(model))


def with_input_shapes(model: onnx.ModelProto, shapes: Mapping[str, Sequence[int]] | Sequence[Sequence[int]]) -> onnx.ModelProto:
    """Returns a copy of the model with fixed input shapes and every tensor's shape inferred.

    ``shapes`` maps input names to shapes, or lists shapes in the order of the graph inputs.
    Symbolic dimensions (a dynamic batch) become the concrete sizes the device runs.
    """
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    initializers = {i.name for i in copy.graph.initializer}
    inputs = [i for i in copy.graph.input if i.name not in initializers]
    if not isinstance(shapes, Mapping):
        shapes = {i.name: s for i, s in zip(inputs, shapes, strict=False)}
    for inp in inputs:
        if inp.name not in shapes:
            continue
        dims = inp.type.tensor_type.shape.dim
        wanted = [int(d) for d in shapes[inp.name]]
        del dims[:]
        for size in wanted:
            dims.add().dim_value = size
    # Stale symbolic shapes from the exporter would shadow the concrete ones.
    del copy.graph.value_info[:]
    for out in copy.graph.output:
        out.type.tensor_type.ClearField("shape")
    return onnx.shape_inference.infer_shapes(copy, strict_mode=False, data_prop=True)


def _shape_of(vi: onnx.ValueInfoProto) -> tuple[tuple[int, ...] | None, int]:
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return None, t.elem_type
    dims = []
    for d in t.shape.dim:
        if not d.HasField("dim_value"):
            return None, t.elem_type
        dims.append(int(d.dim_value))
    return tuple(dims), t.elem_type


def _nm_pattern(reduction_last: np.ndarray) -> tuple[int, int] | None:
    """Returns (N, M) for the N:M pattern (M in 4, 8) a weight satisfies along its last axis."""
    for m in (4, 8):
        flat = reduction_last.reshape(-1, reduction_last.shape[-1])
        if flat.shape[-1] % m:
            continue
        groups = (flat.reshape(-1, m) != 0).sum(axis=1)
        n = int(groups.max()) if groups.size else m
        if n <= m // 2:
            return (n, m)
    return None


def _weight_info(array: np.ndarray, stored_bytes: float, zero_point: np.ndarray | None, axis: int,
                 op: str) -> WeightInfo:
    values = array
    if zero_point is not None and np.any(zero_point):
        # An asymmetric int8 weight: zero is the zero point, per tensor or per channel.
        zp = np.asarray(zero_point).astype(np.int32)
        if zp.size > 1:
            zp = zp.reshape([-1 if d == axis % array.ndim else 1 for d in range(array.ndim)])
        values = array.astype(np.int32) - zp
    zeros = float((values == 0).mean()) if values.size else 0.0
    nm = None
    if values.ndim >= 2 and zeros >= 0.25:
        if op in ("Conv", "QLinearConv", "ConvInteger", "FusedConv") and values.ndim == 4:
            # (Cout, Cin, kh, kw): the reduction runs over Cin (TensorRT) or Cin*kh*kw.
            candidates = [np.moveaxis(values, 1, -1), values.reshape(values.shape[0], -1)]
        elif op in ("Gemm", "QGemm"):
            candidates = [values, values.T]
        else:  # MatMul: B is (..., K, N), the reduction axis is K
            candidates = [np.swapaxes(values, -1, -2)]
        for cand in candidates:
            nm = _nm_pattern(np.ascontiguousarray(cand))
            if nm:
                break
    return WeightInfo(bytes=stored_bytes, shape=tuple(array.shape), zero_fraction=zeros, nm=nm)


class _Graph:
    """Index of a shape-inferred model: producers, consumers, constants, tensor sizes."""

    def __init__(self, model: onnx.ModelProto) -> None:
        g = model.graph
        self.nodes = list(g.node)
        self.initializers = {i.name: i for i in g.initializer}
        self.shapes: dict[str, tuple[int, ...] | None] = {}
        self.types: dict[str, int] = {}
        for vi in [*g.input, *g.value_info, *g.output]:
            shape, elem = _shape_of(vi)
            self.shapes[vi.name] = shape
            self.types[vi.name] = elem
        for init in g.initializer:
            self.shapes[init.name] = tuple(int(d) for d in init.dims)
            self.types[init.name] = init.data_type
        self.graph_inputs = [i.name for i in g.input if i.name not in self.initializers]
        self.graph_outputs = [o.name for o in g.output]
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in self.nodes:
            for out in node.output:
                self.producer[out] = node
            for inp in node.input:
                if inp:
                    self.consumers.setdefault(inp, []).append(node)
        self.constant = self._constants()

    def _constants(self) -> set[str]:
        """Returns tensors known before running: initializers and what is computed from them."""
        const = set(self.initializers)
        for node in self.nodes:
            data = [i for i in node.input if i]
            if node.op_type in ("Shape", "Size") and all(self.shapes.get(i) is not None for i in data):
                const.update(node.output)
            elif node.op_type in SHAPE_ONLY or (data and all(i in const for i in data)):
                const.update(node.output)
        return const

    def numel(self, name: str) -> int | None:
        shape = self.shapes.get(name)
        return None if shape is None else math.prod(shape)

    def nbytes(self, name: str) -> float:
        n = self.numel(name)
        return 0.0 if n is None else n * _ITEMSIZE.get(self.types.get(name, 0), 4)

    def weight_sources(self, name: str) -> list[str]:
        """Returns the initializers (and Constant nodes) a constant tensor is computed from."""
        seen, stack, out = set(), [name], []
        while stack:
            t = stack.pop()
            if t in seen:
                continue
            seen.add(t)
            if t in self.initializers:
                out.append(t)
            elif t in self.producer:
                node = self.producer[t]
                if node.op_type == "Constant":
                    out.append(t)
                elif node.op_type not in ("Shape", "Size"):
                    stack.extend(i for i in node.input if i)
        return out

    def constant_array(self, name: str) -> np.ndarray | None:
        if name in self.initializers:
            return numpy_helper.to_array(self.initializers[name])
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
        return None

    def constant_bytes(self, name: str) -> float:
        if name in self.initializers:
            init = self.initializers[name]
            return math.prod(init.dims) * _ITEMSIZE.get(init.data_type, 4)
        arr = self.constant_array(name)
        return 0.0 if arr is None else float(arr.nbytes)


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _anchor_flops(g: _Graph, node: onnx.NodeProto) -> tuple[float, int, int] | None:
    """Returns (FLOPs, reduction width, output width) of an anchor, or None if shapes are unknown."""
    op = node.op_type
    out = g.shapes.get(node.output[0])
    if op in ("Conv", "ConvInteger", "FusedConv", "QLinearConv"):
        w_name = node.input[3] if op == "QLinearConv" else node.input[1]
        w = g.shapes.get(w_name)
        if out is None or w is None:
            return None
        per_out = math.prod(w[1:])  # Cin/group x kernel
        return 2.0 * math.prod(out) * per_out, w[1] * int(_attr(node, "group", 1)), w[0]
    if op == "ConvTranspose":
        x, w = g.shapes.get(node.input[0]), g.shapes.get(node.input[1])
        if x is None or w is None:
            return None
        group = int(_attr(node, "group", 1))
        return 2.0 * math.prod(x) * (w[1]) * math.prod(w[2:]), w[0], w[1] * group
    if op in ("Gemm", "QGemm"):
        a_name, b_name = (node.input[0], node.input[3]) if op == "QGemm" else (node.input[0], node.input[1])
        a, b = g.shapes.get(a_name), g.shapes.get(b_name)
        if a is None or b is None:
            return None
        k = a[0] if _attr(node, "transA", 0) else a[1]
        n = b[0] if _attr(node, "transB", 0) else b[1]
        m = a[1] if _attr(node, "transA", 0) else a[0]
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
        k, n = int(_attr(node, "K", 0)), int(_attr(node, "N", 0))
        if a is None:
            return None
        return 2.0 * math.prod(a[:-1]) * k * n, k, n
    if op == "Einsum":
        return _einsum_flops(g, node)
    if op in ("Attention", "MultiHeadAttention", "GroupQueryAttention"):
        return _attention_flops(g, node)
    return None


def _einsum_flops(g: _Graph, node: onnx.NodeProto) -> tuple[float, int, int] | None:
    eq = str(_attr(node, "equation", b"")).replace(" ", "")
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


def _attention_flops(g: _Graph, node: onnx.NodeProto) -> tuple[float, int, int] | None:
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


def _other_flops(g: _Graph, node: onnx.NodeProto) -> float:
    """Returns the arithmetic of a non-matmul operator: one op per element, more for windows."""
    out = sum(g.numel(o) or 0 for o in node.output if o)
    op = node.op_type
    if op in ("MaxPool", "AveragePool", "LpPool"):
        return float(out * math.prod(_attr(node, "kernel_shape", [1])))
    if op.startswith("Reduce") or op.startswith("Global") or op in ("ArgMax", "ArgMin"):
        return float(sum(g.numel(i) or 0 for i in node.input[:1] if i))
    if op in ("Softmax", "LogSoftmax", "LayerNormalization", "SimplifiedLayerNormalization",
              "SkipLayerNormalization", "InstanceNormalization", "GroupNormalization"):
        return 5.0 * out
    return float(out)


def lowered_graph(model: str | Path | onnx.ModelProto,
                  input_shapes: Mapping[str, Sequence[int]] | Sequence[Sequence[int]]) -> LoweredGraph:
    """Returns the model as fused kernels in execution order, at the given input shapes."""
    g = _Graph(with_input_shapes(load_model(model), input_shapes))
    owner: dict[int, Kernel] = {}  # id(node) -> kernel that runs it
    kernels: list[Kernel] = []

    def absorb(kernel: Kernel, node: onnx.NodeProto) -> None:
        owner[id(node)] = kernel
        kernel.ops.append(node.op_type)

    def single_consumer(tensor: str) -> onnx.NodeProto | None:
        users = g.consumers.get(tensor, [])
        if len(users) == 1 and tensor not in g.graph_outputs:
            return users[0]
        return None

    for node in g.nodes:
        if id(node) in owner:
            continue
        if all(o in g.constant for o in node.output if o):
            continue  # folded before running (weights, shapes, dequantized constants)
        op = node.op_type
        if op == "DequantizeLinear" and (users := g.consumers.get(node.output[0])):
            # An int8 activation dequantized for the next operator: that operator runs in int8.
            if all(u.op_type != "QuantizeLinear" for u in users) and node.output[0] not in g.graph_outputs:
                continue
        kernel = Kernel(name=node.name or op, op=op, ops=[], precision="fp32")
        absorb(kernel, node)
        kernel.view = op in VIEWS
        if op in ANCHORS:
            # Run the activation, BatchNorm, residual Add and output quantization in the epilogue.
            tail = node
            added = False
            while (nxt := single_consumer(tail.output[0])) is not None and id(nxt) not in owner:
                if nxt.op_type in EPILOGUES and not (nxt.op_type == "Add" and added):
                    added = added or nxt.op_type == "Add"
                elif nxt.op_type == "QuantizeLinear":
                    pass
                else:
                    break
                absorb(kernel, nxt)
                tail = nxt
        elif op != "QuantizeLinear":
            # A QDQ operator unit: int8 in, int8 out, no separate (de)quantize kernels.
            users = g.consumers.get(node.output[0], []) if node.output else []
            if (len(users) == 1 and users[0].op_type == "QuantizeLinear" and id(users[0]) not in owner
                    and node.output[0] not in g.graph_outputs):
                absorb(kernel, users[0])
        kernels.append(kernel)

    members: dict[int, list[onnx.NodeProto]] = {id(k): [] for k in kernels}
    last: dict[int, int] = {}
    for index, n in enumerate(g.nodes):
        if id(n) in owner:
            members[id(owner[id(n)])].append(n)
            last[id(owner[id(n)])] = index
    for kernel in kernels:
        _fill_kernel(g, kernel, members[id(kernel)])
    # A fused kernel runs once its last node's inputs exist (a residual Add may read a branch
    # computed after the convolution it follows), so order kernels by their last node.
    kernels.sort(key=lambda k: last[id(k)])

    tensor_bytes = {name: g.nbytes(name) for name in g.shapes}
    weight_names = {w for w in g.initializers} | {
        o for n in g.nodes if n.op_type == "Constant" for o in n.output}
    weight_bytes = sum(g.constant_bytes(w) for w in weight_names)
    return LoweredGraph(kernels=kernels, tensor_bytes=tensor_bytes, weight_bytes=weight_bytes,
                        graph_inputs=g.graph_inputs, graph_outputs=g.graph_outputs)


def _dequantized_input(g: _Graph, tensor: str) -> str:
    """Returns the int8 tensor behind a DequantizeLinear of an activation, else the tensor."""
    node = g.producer.get(tensor)
    if node is not None and node.op_type == "DequantizeLinear" and tensor not in g.constant:
        return node.input[0]
    return tensor


def _fill_kernel(g: _Graph, kernel: Kernel, nodes: list[onnx.NodeProto]) -> None:
    """Sets the kernel's precision, FLOPs, weight and activation bytes from its nodes."""
    produced = {o for n in nodes for o in n.output if o}
    mine = {id(n) for n in nodes}
    inputs: list[str] = []
    weights: list[str] = []
    dequantized_weight = False
    for n in nodes:
        for inp in (i for i in n.input if i):
            if inp in produced:
                continue
            if inp in g.constant:
                for src in g.weight_sources(inp):
                    if src not in weights:
                        weights.append(src)
                producer = g.producer.get(inp)
                if producer is not None and producer.op_type == "DequantizeLinear":
                    dequantized_weight = True
                continue
            real = _dequantized_input(g, inp)
            if real not in inputs:
                inputs.append(real)
    outputs = [o for n in nodes for o in n.output if o and (o in g.graph_outputs or any(
        id(c) not in mine for c in g.consumers.get(o, [])))]
    kernel.inputs, kernel.outputs = inputs, outputs
    kernel.weight_bytes = sum(g.constant_bytes(w) for w in weights)
    kernel.activation_bytes = 0.0 if kernel.view else sum(g.nbytes(t) for t in [*inputs, *outputs])
    kernel.unknown_shape = any(g.numel(t) is None for t in [*inputs, *outputs])

    head = nodes[0]
    act_types = {g.types.get(t) for t in [*inputs, *outputs]}
    if head.op_type in QUANTIZED_ANCHORS or dequantized_weight or act_types & {TensorProto.INT8, TensorProto.UINT8}:
        kernel.precision = "int8"
    elif act_types & {TensorProto.FLOAT16, TensorProto.BFLOAT16}:
        kernel.precision = "fp16"
    else:
        weight_types = {g.types.get(w) for w in weights}
        kernel.precision = next((_PRECISION[t] for t in weight_types if t in _PRECISION), "fp32")

    if kernel.view:
        return
    if head.op_type in ANCHORS:
        found = _anchor_flops(g, head)
        if found is None:
            kernel.unknown_shape = True
        else:
            kernel.flops, kernel.in_channels, kernel.out_channels = found
        kernel.flops += sum(_other_flops(g, n) for n in nodes[1:] if n.op_type in EPILOGUES)
        kernel.weights = _weights_of_anchor(g, head)
    else:
        kernel.flops = sum(_other_flops(g, n) for n in nodes if n.op_type not in ("QuantizeLinear", "DequantizeLinear")) \
            or sum(_other_flops(g, n) for n in nodes)


def _weights_of_anchor(g: _Graph, node: onnx.NodeProto) -> list[WeightInfo]:
    """Returns the weight matrix of a matmul-like anchor with its zero pattern (empty if none)."""
    op = node.op_type
    index = {"QLinearConv": 3, "QLinearMatMul": 3, "QGemm": 3}.get(op, 1)
    if len(node.input) <= index or node.input[index] not in g.constant:
        return []
    name = node.input[index]
    zero_point, axis = None, 0
    producer = g.producer.get(name)
    if producer is not None and producer.op_type == "DequantizeLinear":
        source = producer.input[0]
        axis = int(_attr(producer, "axis", 1))
        if len(producer.input) > 2 and producer.input[2]:
            zero_point = g.constant_array(producer.input[2])
    else:
        source = name
    if op in QUANTIZED_ANCHORS and len(node.input) > index + 2 and node.input[index + 2]:
        zero_point = g.constant_array(node.input[index + 2])
    array = g.constant_array(source)
    if array is None or array.ndim < 2:
        return []
    return [_weight_info(array, g.constant_bytes(source), zero_point, axis, op)]
