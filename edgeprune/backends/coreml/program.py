"""What a Core ML package stores: its MIL program's weights, how each is encoded, read from the spec.

Works without Apple hardware: only the package's protobuf spec is read (coremltools parses
it on any OS). Compressed weights are ``constexpr_*`` ops whose operands' tensor types say
how many values are stored and in how many bits; dense weights are plain ``const`` ops.
Both the iOS16/17 encodings (operands as attributes) and the iOS18 ones (operands as
inline input values) are understood.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

# Bits of each MIL element type, for the types weights are stored in.
_BITS = {
    "FLOAT32": 32, "FLOAT16": 16, "BFLOAT16": 16, "INT8": 8, "UINT8": 8, "INT4": 4, "UINT4": 4,
    "UINT6": 6, "UINT3": 3, "UINT2": 2, "UINT1": 1, "INT16": 16, "UINT16": 16, "INT32": 32,
}
# Dense weights smaller than this are biases, norms and scales, not what compression is about.
MIN_WEIGHT_ELEMENTS = 2048


@dataclass(frozen=True)
class StoredWeight:
    """One weight tensor of the program and its encoding.

    encoding: dense, sparse, palettized, linear (int8/int4 with scales), sparse+palettized or
    sparse+linear. nonzero: stored non-zero values (sparse encodings) or all values. bits:
    bits per stored value (the lookup-table index width for palettized weights).
    """

    name: str
    op: str
    shape: tuple[int, ...]
    encoding: str
    nonzero: int
    bits: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def sparsity(self) -> float:
        return 1 - self.nonzero / self.numel if self.numel else 0.0


@dataclass(frozen=True)
class ProgramSummary:
    """The package's spec: version, opset, op counts, compute dtype and its weights."""

    specification_version: int
    opset: str
    op_counts: dict[str, int]
    weights: tuple[StoredWeight, ...] = ()
    compute_dtypes: dict[str, int] = field(default_factory=dict)

    def by_encoding(self) -> dict[str, int]:
        """Returns how many weights use each encoding."""
        return dict(Counter(w.encoding for w in self.weights))

    def to_dict(self) -> dict:
        """Returns a compact summary for report.json."""
        compressed = [w for w in self.weights if w.encoding != "dense"]
        sparse = [w for w in compressed if "sparse" in w.encoding]
        stored_sparsity = 1 - sum(w.nonzero for w in sparse) / sum(w.numel for w in sparse) if sparse else None
        return {
            "specification_version": self.specification_version, "opset": self.opset,
            "weights": self.by_encoding(),
            "compressed_ops": {op: n for op, n in self.op_counts.items() if op.startswith("constexpr")},
            "sparsity_of_sparse_weights": None if stored_sparsity is None else round(stored_sparsity, 4),
            "bits": sorted({w.bits for w in compressed}),
            "compressed_elements": sum(w.numel for w in compressed),
            "compute_dtypes": self.compute_dtypes,
        }


def read_program(package: str | Path) -> ProgramSummary:
    """Returns the summary of an .mlpackage's main function; raises if the spec does not load."""
    import coremltools as ct
    from coremltools.proto import MIL_pb2

    spec = ct.models.MLModel(str(package), skip_model_load=True).get_spec()
    if spec.WhichOneof("Type") != "mlProgram":
        raise ValueError(f"{package} holds a {spec.WhichOneof('Type')} model, not an mlprogram")
    function = spec.mlProgram.functions["main"]
    block = function.block_specializations[function.opset]
    dtype = MIL_pb2.DataType.Name
    outputs: dict[str, tuple[str, tuple[int, ...]]] = {}
    for op in block.operations:
        for out in op.outputs:
            outputs[out.name] = _tensor(out.type, dtype)
    weights: list[StoredWeight] = []
    constexpr_outputs: set[str] = set()
    compute: Counter[str] = Counter()
    for op in block.operations:
        if op.type.startswith("constexpr_"):
            sources = {a.name for arg in op.inputs.values() for a in arg.arguments if a.name}
            constexpr_outputs.update(out.name for out in op.outputs)
            if op.type == "constexpr_sparse_to_dense" and sources & constexpr_outputs:
                continue  # the dense end of a joint encoding, already recorded by the op before it
            stored = _decode(op.type, op.outputs[0].name, _operands(op, outputs, dtype), outputs[op.outputs[0].name][1])
            if stored is not None:
                weights.append(stored)
        elif op.type == "const":
            name = op.outputs[0].name
            kind, shape = outputs[name]
            if kind in ("FLOAT16", "FLOAT32") and math.prod(shape or (0,)) >= MIN_WEIGHT_ELEMENTS:
                weights.append(StoredWeight(name, op.type, shape, "dense", math.prod(shape), _BITS[kind]))
        elif op.type in ("conv", "linear", "matmul", "conv_transpose"):
            compute[outputs[op.outputs[0].name][0]] += 1
    counts = Counter(op.type for op in block.operations)
    return ProgramSummary(spec.specificationVersion, function.opset, dict(counts), tuple(weights), dict(compute))


def _tensor(value_type, dtype_name) -> tuple[str, tuple[int, ...]]:
    tensor = value_type.tensorType
    return dtype_name(tensor.dataType), tuple(int(d.constant.size) for d in tensor.dimensions)


def _operands(op, outputs, dtype_name) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Returns each tensor operand of a constexpr op: (element type, shape)."""
    found = {}
    for key, value in op.attributes.items():  # iOS16/17: operands are attributes
        if key != "name" and value.type.HasField("tensorType"):
            found[key] = _tensor(value.type, dtype_name)
    for key, arg in op.inputs.items():  # iOS18: operands are inputs, inline values or other ops
        for a in arg.arguments:
            if a.HasField("value") and a.value.type.HasField("tensorType"):
                found[key] = _tensor(a.value.type, dtype_name)
            elif a.name in outputs:
                found[key] = outputs[a.name]
    return found


def _decode(op_type: str, name: str, operands: dict, shape: tuple[int, ...]) -> StoredWeight | None:
    """Returns the stored encoding a constexpr op stands for (None for ops that store no weight)."""
    numel = math.prod(shape)
    if op_type == "constexpr_sparse_to_dense":
        return StoredWeight(name, op_type, shape, "sparse", _count(operands.get("nonzero_data")),
                            _BITS.get(operands.get("nonzero_data", ("FLOAT16",))[0], 16))
    if op_type == "constexpr_lut_to_dense":
        return StoredWeight(name, op_type, shape, "palettized", numel, _lut_bits(operands["lut"][1]))
    if op_type == "constexpr_lut_to_sparse":
        return StoredWeight(name, op_type, shape, "sparse+palettized", _count(operands.get("indices_nonzero_data")),
                            _lut_bits(operands["lut"][1]))
    if op_type == "constexpr_affine_dequantize":
        return StoredWeight(name, op_type, shape, "linear", numel, _BITS[operands["quantized_data"][0]])
    if op_type == "constexpr_blockwise_shift_scale":
        return StoredWeight(name, op_type, shape, "linear", numel, _BITS[operands["data"][0]])
    if op_type == "constexpr_sparse_blockwise_shift_scale":
        return StoredWeight(name, op_type, shape, "sparse+linear", _count(operands.get("nonzero_data")),
                            _BITS[operands["nonzero_data"][0]])
    return None


def _count(operand: tuple[str, tuple[int, ...]] | None) -> int:
    return math.prod(operand[1]) if operand else 0


def _lut_bits(lut_shape: tuple[int, ...]) -> int:
    # iOS16/17: the table is a vector of 2^bits entries; iOS18: [..., 2^bits, vector_size].
    entries = lut_shape[0] if len(lut_shape) == 1 else lut_shape[-2]
    return int(round(math.log2(entries)))
