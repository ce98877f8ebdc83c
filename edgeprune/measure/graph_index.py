"""An ONNX model indexed for estimating: tensor shapes and types, producers, consumers, constants, weights.

The model is shape-inferred at the input shapes the device sees; the index answers what
the kernel grouping (graph.py) and the FLOP counts (graph_flops.py) ask of it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

# Operators whose output is known once input shapes are fixed: folded before running.
SHAPE_ONLY = frozenset({"Shape", "Size", "Constant", "ConstantOfShape"})

ITEMSIZE = {
    TensorProto.FLOAT: 4, TensorProto.FLOAT16: 2, TensorProto.BFLOAT16: 2, TensorProto.DOUBLE: 8,
    TensorProto.INT8: 1, TensorProto.UINT8: 1, TensorProto.INT16: 2, TensorProto.UINT16: 2,
    TensorProto.INT32: 4, TensorProto.UINT32: 4, TensorProto.INT64: 8, TensorProto.UINT64: 8,
    TensorProto.BOOL: 1, TensorProto.INT4: 0.5, TensorProto.UINT4: 0.5,
    TensorProto.FLOAT8E4M3FN: 1, TensorProto.FLOAT8E5M2: 1,
}
PRECISION = {TensorProto.FLOAT16: "fp16", TensorProto.BFLOAT16: "fp16", TensorProto.INT8: "int8",
              TensorProto.UINT8: "int8", TensorProto.INT4: "int8", TensorProto.UINT4: "int8"}


@dataclass(frozen=True)
class WeightInfo:
    """A weight tensor a kernel reads: stored bytes, shape, and its zero pattern."""

    bytes: float
    shape: tuple[int, ...]
    zero_fraction: float
    nm: tuple[int, int] | None  # the finest N:M pattern it satisfies along its reduction axis


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
    inferred = onnx.shape_inference.infer_shapes(copy, strict_mode=False, data_prop=True)
    if not _unknown_operands(inferred):
        return inferred
    # ONNX's own inference loses sizes through shapes computed in the graph (a transformer's position
    # ids sliced to the sequence length): ONNX Runtime's symbolic inference follows them
    symbolic = _symbolic_shapes(copy)
    return symbolic if symbolic is not None and len(_unknown_operands(symbolic)) < len(_unknown_operands(inferred)) \
        else inferred


# ONNX Runtime's symbolic inference saves what it could not finish under this name in the working
# folder (with its weights beside it): it is given no large weights, and its file is removed
_SYMBOLIC_LEFTOVER = Path("sym_shape_infer_temp.onnx")
_SHAPE_CONSTANT_MAX = 64  # elements: the initializers a shape can be computed from are kept


def _symbolic_shapes(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """Returns the model with ONNX Runtime's symbolic shapes, or None where its inference fails."""
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    light = onnx.ModelProto()
    light.CopyFrom(model)
    kept = [i for i in light.graph.initializer if int(np.prod(i.dims)) <= _SHAPE_CONSTANT_MAX]
    weights = [i for i in light.graph.initializer if int(np.prod(i.dims)) > _SHAPE_CONSTANT_MAX]
    del light.graph.initializer[:]
    light.graph.initializer.extend(kept)
    declared = {i.name for i in light.graph.input}
    light.graph.input.extend(onnx.helper.make_tensor_value_info(w.name, w.data_type, list(w.dims))
                             for w in weights if w.name not in declared)
    had_leftover = _SYMBOLIC_LEFTOVER.exists()
    try:
        symbolic = SymbolicShapeInference.infer_shapes(light, auto_merge=True, guess_output_rank=False)
    except Exception:  # its own gaps (an op it does not know): keep what ONNX inferred
        symbolic = None
    finally:
        if not had_leftover:
            _SYMBOLIC_LEFTOVER.unlink(missing_ok=True)
    if symbolic is None:
        return None
    shaped = onnx.ModelProto()
    shaped.CopyFrom(model)
    del shaped.graph.value_info[:]
    shaped.graph.value_info.extend(symbolic.graph.value_info)
    del shaped.graph.output[:]
    shaped.graph.output.extend(symbolic.graph.output)
    return shaped


# operators whose cost the estimator reads from their operands' shapes
_SHAPED_OPS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm", "MatMulInteger", "QLinearConv", "QLinearMatMul"})


def _unknown_operands(model: onnx.ModelProto) -> list[str]:
    """Returns the names of the matrix and convolution nodes whose first operand has no concrete shape."""
    known = {i.name for i in model.graph.initializer}
    shapes = {v.name: v for v in (*model.graph.value_info, *model.graph.input)}
    unknown = []
    for node in model.graph.node:
        if node.op_type not in _SHAPED_OPS or not node.input or node.input[0] in known:
            continue
        vi = shapes.get(node.input[0])
        dims = vi.type.tensor_type.shape.dim if vi is not None and vi.type.tensor_type.HasField("shape") else None
        if not dims or any(not d.HasField("dim_value") for d in dims):
            unknown.append(node.name or node.op_type)
    return unknown


def shape_of(vi: onnx.ValueInfoProto) -> tuple[tuple[int, ...] | None, int]:
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return None, t.elem_type
    dims = []
    for d in t.shape.dim:
        if not d.HasField("dim_value"):
            return None, t.elem_type
        dims.append(int(d.dim_value))
    return tuple(dims), t.elem_type


def nm_pattern(reduction_last: np.ndarray) -> tuple[int, int] | None:
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


def weight_info(array: np.ndarray, stored_bytes: float, zero_point: np.ndarray | None, axis: int,
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
            nm = nm_pattern(np.ascontiguousarray(cand))
            if nm:
                break
    return WeightInfo(bytes=stored_bytes, shape=tuple(array.shape), zero_fraction=zeros, nm=nm)


class GraphIndex:
    """Index of a shape-inferred model: producers, consumers, constants, tensor sizes."""

    def __init__(self, model: onnx.ModelProto) -> None:
        g = model.graph
        self.nodes = list(g.node)
        self.initializers = {i.name: i for i in g.initializer}
        self.shapes: dict[str, tuple[int, ...] | None] = {}
        self.types: dict[str, int] = {}
        for vi in [*g.input, *g.value_info, *g.output]:
            shape, elem = shape_of(vi)
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
        return 0.0 if n is None else n * ITEMSIZE.get(self.types.get(name, 0), 4)

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
            return math.prod(init.dims) * ITEMSIZE.get(init.data_type, 4)
        arr = self.constant_array(name)
        return 0.0 if arr is None else float(arr.nbytes)


def attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default
