"""A lowered ONNX graph as the fused kernels a runtime executes, each with FLOPs and bytes.

Runtimes do not run ONNX nodes one by one: ONNX Runtime and TensorRT fold constants, fold
BatchNormalization into the convolution before it, run an activation (and a residual Add)
inside the convolution's kernel, and turn QuantizeLinear/DequantizeLinear pairs around an
operator into one int8 operator. The roofline estimator and the memory estimate both need
the graph as those fused kernels, so the grouping lives here once.

With ``runtime="onnxruntime"`` the grouping follows what ONNX Runtime's CPU provider fuses:
in a file with a free axis (a dynamic batch) a MatMul over more than two dimensions keeps its
bias Add as a kernel of its own (only a product whose sizes it knows becomes a Gemm), an
integer product takes its rescaling back to float (Cast, Mul, bias Add: MatMulIntegerToFloat),
a chain of elementwise operators each feeding only the next (GELU's Div, Erf, Add, Mul,
Mul) runs as one kernel, as its Gelu and BiasGelu fusions do, with the branches read only by it
(GELU's x * 0.5, the bias Add before it), and a float product runs the scaling of its inputs or
output by a constant scalar inside it (its FusedMatMul).

Where the runtime is known to leave a Q/DQ group unfused (``unfused``: the names of the nodes
ONNX Runtime's optimized graph still runs in float behind a DequantizeLinear), that node is
what the runtime runs: an fp32 kernel reading dequantized weights, with its DequantizeLinear
and QuantizeLinear as kernels of their own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import onnx
from onnx import TensorProto

from edgeprune.measure.graph_flops import anchor_flops, conv_window, depthwise_extent, other_flops
from edgeprune.measure.graph_index import (
    PRECISION,
    GraphIndex,
    WeightInfo,
    attr,
    load_model,
    weight_info,
    with_input_shapes,
)

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
# Operators that read rows of a table by index: they move the rows they read, not the whole table.
LOOKUPS = frozenset({"Gather", "GatherElements", "GatherND"})
# Operators that change how a tensor is viewed, not its data: no kernel of their own.
VIEWS = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Dropout"})
# Elementwise operators ONNX Runtime fuses when each feeds only the next (its Gelu, BiasGelu, FastGelu fusions).
ELEMENTWISE = frozenset({"Add", "Sub", "Mul", "Div", "Erf", "Tanh", "Sigmoid", "Relu", "Pow", "Sqrt", "Exp", "Neg",
                         "Clip", "HardSwish", "HardSigmoid", "Gelu", "FastGelu", "LeakyRelu"})
ONNXRUNTIME = "onnxruntime"
# Integer products whose int32 result is cast, scaled and biased back to float after them (dynamic int8)
INTEGER_PRODUCTS = frozenset({"MatMulInteger", "ConvInteger"})
RESCALE = frozenset({"Cast", "Mul", "Add"})
INT8_TYPES = frozenset({TensorProto.INT8, TensorProto.UINT8})
QUANTIZED_ANCHORS = frozenset({"QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "QGemm",
                               "DynamicQuantizeMatMul", "MatMulNBits"})

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
    tap_channels: int = 0  # a one-group convolution's input channels: what each window tap reduces over
    window_rows: int = 0  # a convolution's window height (kh)
    output_elements: float = 0.0  # elements a convolution writes
    depthwise_outputs: float = 0.0  # elements a depthwise convolution writes (its cost is per output, not per FLOP)
    depthwise_channels: float = 0.0  # and the planes it writes them in (each plane pays a cost of its own)
    elements: float = 0.0  # a kernel between layers (no anchor): the elements it reads or writes, the larger
    view: bool = False  # a reshape-like kernel: aliases its input, costs nothing
    unknown_shape: bool = False
    unfused: bool = False  # a quantized layer the runtime runs in float behind DequantizeLinear

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


def lowered_graph(model: str | Path | onnx.ModelProto,
                  input_shapes: Mapping[str, Sequence[int]] | Sequence[Sequence[int]],
                  unfused: frozenset[str] = frozenset(), runtime: str | None = None) -> LoweredGraph:
    """Returns the model as fused kernels in execution order, at the given input shapes.

    ``unfused``: names of nodes the runtime leaves in float behind a DequantizeLinear (see the
    module's docstring); every other Q/DQ group is taken to run as one integer kernel.
    ``runtime``: "onnxruntime" groups as ONNX Runtime's CPU provider does (see the module's
    docstring); None, as a compiler that fuses every epilogue (TensorRT, Core ML) does.
    """
    ort = runtime == ONNXRUNTIME
    loaded = load_model(model)
    # ONNX Runtime turns a MatMul and its bias into a Gemm only where it knows every size: in a file
    # with a free axis (a dynamic batch, as edgeprune exports) a product over more than two dimensions
    # runs alone and its bias Add after it
    weights = {t.name for t in loaded.graph.initializer}
    free_axis = any(not d.HasField("dim_value") for i in loaded.graph.input if i.name not in weights
                    for d in i.type.tensor_type.shape.dim)
    g = GraphIndex(with_input_shapes(loaded, input_shapes))
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

    # ONNX Runtime's MatMulScaleFusion: a float product runs the scaling of its inputs by a constant inside it
    scaled_inputs: dict[int, list[onnx.NodeProto]] = {}
    if ort:
        for node in g.nodes:
            user = single_consumer(node.output[0]) if node.output else None
            source = g.producer.get(next((i for i in node.input if i not in g.constant), ""))
            # (not the end of an elementwise pattern, GELU's x * 0.5: its own fusion takes that first)
            if user is not None and user.op_type == "MatMul" and _scaling(g, node) and not (
                    source is not None and source.op_type in ELEMENTWISE):
                scaled_inputs.setdefault(id(user), []).append(node)
    deferred = {id(n) for found in scaled_inputs.values() for n in found}
    heads: dict[int, int] = {}  # id(kernel) -> id(the node it is built around)

    for node in g.nodes:
        if id(node) in owner or id(node) in deferred:
            continue
        if all(o in g.constant for o in node.output if o):
            continue  # folded before running (weights, shapes, dequantized constants)
        op = node.op_type
        if op == "DequantizeLinear" and (users := g.consumers.get(node.output[0])):
            # An int8 activation dequantized for the next operator: that operator runs in int8,
            # unless the runtime left it unfused (then this dequantization is a kernel of its own).
            if all(u.op_type != "QuantizeLinear" and u.name not in unfused for u in users) \
                    and node.output[0] not in g.graph_outputs:
                continue
        kernel = Kernel(name=node.name or op, op=op, ops=[], precision="fp32", unfused=bool(node.name)
                        and node.name in unfused)
        absorb(kernel, node)
        heads[id(kernel)] = id(node)
        for scaling in scaled_inputs.get(id(node), []):
            absorb(kernel, scaling)
        kernel.view = op in VIEWS
        if op in ANCHORS:
            # Run the activation, BatchNorm, residual Add and output quantization in the epilogue.
            tail = node
            added = False
            batched = ort and free_axis and op == "MatMul" and len(g.shapes.get(node.output[0]) or ()) > 2
            # ONNX Runtime's MatMulIntegerToFloat: the int32 result scaled back and biased in the kernel
            fusable = EPILOGUES | RESCALE if ort and op in INTEGER_PRODUCTS else EPILOGUES
            while (nxt := single_consumer(tail.output[0])) is not None and id(nxt) not in owner:
                scaled = ort and op == "MatMul" and _scaling(g, nxt)  # its output scaled inside it too
                if batched and not scaled and nxt.op_type != "QuantizeLinear":
                    break
                if scaled:
                    pass
                elif nxt.op_type in fusable and not (nxt.op_type == "Add" and added):
                    added = added or nxt.op_type == "Add"
                elif nxt.op_type == "QuantizeLinear" and not kernel.unfused:
                    pass
                else:
                    break
                absorb(kernel, nxt)
                tail = nxt
        elif op != "QuantizeLinear" and not kernel.unfused:
            # A QDQ operator unit: int8 in, int8 out, no separate (de)quantize kernels.
            users = g.consumers.get(node.output[0], []) if node.output else []
            if (len(users) == 1 and users[0].op_type == "QuantizeLinear" and id(users[0]) not in owner
                    and node.output[0] not in g.graph_outputs):
                absorb(kernel, users[0])
            elif ort and op in ELEMENTWISE:
                tail = node
                # the next operator joins only if its other inputs are ready (not a product's result yet to be
                # computed, whose own kernel takes that operator in: a scale multiplied into an integer product)
                while ((nxt := single_consumer(tail.output[0])) is not None and id(nxt) not in owner
                       and nxt.op_type in ELEMENTWISE and all(
                           i in g.constant or (src := g.producer.get(i)) is None or id(src) in owner
                           for i in nxt.input if i)):
                    absorb(kernel, nxt)
                    tail = nxt
        kernels.append(kernel)

    if ort:
        kernels = _merge_elementwise(g, kernels, owner)
    members: dict[int, list[onnx.NodeProto]] = {id(k): [] for k in kernels}
    last: dict[int, int] = {}
    for index, n in enumerate(g.nodes):
        if id(n) in owner:
            members[id(owner[id(n)])].append(n)
            last[id(owner[id(n)])] = index
    for kernel in kernels:  # the node a kernel is built around first (a product after its inputs' scalings)
        members[id(kernel)].sort(key=lambda n, k=kernel: id(n) != heads[id(k)])
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


def _scaling(g: GraphIndex, node: onnx.NodeProto) -> bool:
    """Returns whether a node multiplies (or divides) a float tensor by a constant scalar."""
    if node.op_type not in ("Mul", "Div") or len(node.input) != 2 or g.types.get(node.output[0]) != TensorProto.FLOAT:
        return False
    scalars = [i in g.constant and g.numel(i) == 1 for i in node.input]
    return scalars[1] != scalars[0] and (node.op_type == "Mul" or scalars[1])


def _merge_elementwise(g: GraphIndex, kernels: list[Kernel], owner: dict[int, Kernel]) -> list[Kernel]:
    """Returns the kernels with each elementwise kernel read only by another elementwise kernel run inside
    it, as ONNX Runtime's fusions of a pattern run its branches (GELU's x * 0.5 beside its Erf or Tanh, a
    bias Add before it: BiasGelu)."""
    def elementwise(k: Kernel) -> bool:
        return not k.view and all(o in ELEMENTWISE for o in k.ops)

    nodes: dict[int, list[onnx.NodeProto]] = {id(k): [] for k in kernels}
    for n in g.nodes:
        if id(n) in owner:
            nodes[id(owner[id(n)])].append(n)
    gone: set[int] = set()
    for kernel in kernels:
        if not elementwise(kernel):
            continue
        outputs = [o for n in nodes[id(kernel)] for o in n.output if o]
        readers = {id(owner.get(id(c))): owner.get(id(c)) for o in outputs for c in g.consumers.get(o, [])
                   if owner.get(id(c)) is not kernel}
        if len(readers) != 1 or any(o in g.graph_outputs for o in outputs):
            continue
        (target,) = readers.values()
        if target is None or not elementwise(target):
            continue
        for n in nodes[id(kernel)]:
            owner[id(n)] = target
        nodes[id(target)] += nodes.pop(id(kernel))
        target.ops[:0] = kernel.ops
        gone.add(id(kernel))
    return [k for k in kernels if id(k) not in gone]


def _dequantized_input(g: GraphIndex, tensor: str) -> str:
    """Returns the int8 tensor behind a DequantizeLinear of an activation, else the tensor."""
    node = g.producer.get(tensor)
    if node is not None and node.op_type == "DequantizeLinear" and tensor not in g.constant:
        return node.input[0]
    return tensor


def _fill_kernel(g: GraphIndex, kernel: Kernel, nodes: list[onnx.NodeProto]) -> None:
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
            real = inp if kernel.unfused else _dequantized_input(g, inp)
            if real not in inputs:
                inputs.append(real)
    outputs = [o for n in nodes for o in n.output if o and (o in g.graph_outputs or any(
        id(c) not in mine for c in g.consumers.get(o, [])))]
    kernel.inputs, kernel.outputs = inputs, outputs
    kernel.weight_bytes = sum(g.constant_bytes(w) for w in weights)
    if nodes[0].op_type in LOOKUPS and nodes[0].input[0] in g.constant and g.numel(nodes[0].output[0]) is not None:
        # a lookup (an embedding's Gather) reads the rows it gathers, not its whole table (unsized: the table)
        kernel.weight_bytes = min(kernel.weight_bytes, g.nbytes(nodes[0].output[0]))
    if kernel.unfused and dequantized_weight:
        # Dequantized on every run: the int8 weights read, fp32 written, and read by the fp32 kernel.
        kernel.weight_bytes += sum(8 * g.constant_bytes(w) for w in weights if g.types.get(w) in INT8_TYPES)
    kernel.activation_bytes = 0.0 if kernel.view else sum(g.nbytes(t) for t in [*inputs, *outputs])
    kernel.unknown_shape = any(g.numel(t) is None for t in [*inputs, *outputs])

    head = nodes[0]
    act_types = {g.types.get(t) for t in [*inputs, *outputs]}
    if kernel.unfused:
        kernel.precision = "fp32"
    elif head.op_type in QUANTIZED_ANCHORS or dequantized_weight or act_types & INT8_TYPES:
        kernel.precision = "int8"
    elif act_types & {TensorProto.FLOAT16, TensorProto.BFLOAT16}:
        kernel.precision = "fp16"
    else:
        weight_types = {g.types.get(w) for w in weights}
        kernel.precision = next((PRECISION[t] for t in weight_types if t in PRECISION), "fp32")

    if kernel.view:
        return
    if head.op_type in ANCHORS:
        found = anchor_flops(g, head)
        if found is None:
            kernel.unknown_shape = True
        else:
            kernel.flops, kernel.in_channels, kernel.out_channels = found
            kernel.tap_channels, kernel.window_rows, kernel.output_elements = conv_window(g, head)
            kernel.depthwise_outputs, kernel.depthwise_channels = depthwise_extent(g, head)
        kernel.flops += sum(other_flops(g, n) for n in nodes[1:] if n.op_type in EPILOGUES)
        kernel.weights = _weights_of_anchor(g, head)
    else:
        kernel.flops = sum(other_flops(g, n) for n in nodes if n.op_type not in ("QuantizeLinear", "DequantizeLinear")) \
            or sum(other_flops(g, n) for n in nodes)
        if "Pool" not in head.op_type:  # poolings are a convolution's kind of work, not a pass between layers
            kernel.elements = float(max(sum(g.numel(t) or 0 for t in inputs), sum(g.numel(t) or 0 for t in outputs)))


def _weights_of_anchor(g: GraphIndex, node: onnx.NodeProto) -> list[WeightInfo]:
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
        axis = int(attr(producer, "axis", 1))
        if len(producer.input) > 2 and producer.input[2]:
            zero_point = g.constant_array(producer.input[2])
    else:
        source = name
    if op in QUANTIZED_ANCHORS and len(node.input) > index + 2 and node.input[index + 2]:
        zero_point = g.constant_array(node.input[index + 2])
    array = g.constant_array(source)
    if array is None or array.ndim < 2:
        return []
    return [weight_info(array, g.constant_bytes(source), zero_point, axis, op)]
