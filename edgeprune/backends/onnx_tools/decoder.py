"""A LLaMA-family decoder with a KV cache, written as the ONNX graph ONNX Runtime GenAI runs.

The layout is the one ONNX Runtime GenAI's model builder emits, so its ``Generator`` runs the
file and ONNX Runtime alone can too: ``input_ids`` and ``attention_mask`` in,
``past_key_values.N.key/value`` in and ``present.N.key/value`` out per layer, one
``GroupQueryAttention`` (rotary embedding inside it) per layer, ``SkipSimplifiedLayerNormalization``
joining each residual add to the next norm, and projections as ``MatMul`` (fp32, fp16) or
``MatMulNBits`` (int4, int8 weights in blocks). The weights come one layer at a time from a
``DecoderSource`` and go straight to ``model.onnx.data``, so the model is never held whole.

GroupQueryAttention's CPU kernel takes head sizes that are multiples of 16; a head of another
size is padded with zero dimensions (queries, keys and values alike, the rotary halves kept
paired), which changes no result and is reported, with the larger KV cache it costs.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgeprune.backends.onnx_tools.weight_only import (
    QuantizedMatrix,
    WeightOnly,
    matmul_nbits_node,
    quantize_matrix,
)

HEAD_MULTIPLE = 16
DATA_FILE = "model.onnx.data"
INLINE_BYTES = 1024
OPSET = [helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]
_ELEM = {"fp32": TensorProto.FLOAT, "fp16": TensorProto.FLOAT16}
_NUMPY = {"fp32": np.float32, "fp16": np.float16}


@dataclass(frozen=True)
class DecoderShape:
    """The widths of a decoder; uniform across layers (GroupQueryAttention and GenAI need that)."""

    family: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    vocab: int
    eps: float
    context: int
    tied: bool
    qkv_bias: bool = False
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None

    @property
    def padded_head_dim(self) -> int:
        return -(-self.head_dim // HEAD_MULTIPLE) * HEAD_MULTIPLE

    def matmul_params(self, head_size: int | None = None) -> int:
        """Returns the weights a token is multiplied by: every projection and the LM head (heads of ``head_size``)."""
        hd = head_size or self.head_dim
        per_layer = (self.hidden * (self.heads * hd + 2 * self.kv_heads * hd) + self.heads * hd * self.hidden
                     + 3 * self.hidden * self.ffn)
        return self.layers * per_layer + self.vocab * self.hidden

    def kv_cache_bytes(self, tokens: int, element_bytes: int = 4) -> int:
        """Returns the key/value cache's bytes at ``tokens`` of context (both, every layer, padded heads)."""
        return 2 * self.layers * self.kv_heads * self.padded_head_dim * tokens * element_bytes


@dataclass(frozen=True)
class LayerWeights:
    """One decoder block's weights as float32 arrays, projections (out, in) like torch's Linear.

    The block's input norm is apart (``DecoderSource.input_norm``): the graph joins it to the
    previous block's residual add.
    """

    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    o: np.ndarray
    post_norm: np.ndarray
    gate: np.ndarray
    up: np.ndarray
    down: np.ndarray
    q_bias: np.ndarray | None = None
    k_bias: np.ndarray | None = None
    v_bias: np.ndarray | None = None


class DecoderSource(Protocol):
    """Where a decoder's weights come from, one part at a time (a model in memory, or a checkpoint)."""

    shape: DecoderShape

    def embedding(self) -> np.ndarray:
        """Returns the token embeddings, (vocab, hidden)."""

    def lm_head(self) -> np.ndarray | None:
        """Returns the output projection, (vocab, hidden), or None when it is the embedding (tied)."""

    def input_norm(self, index: int) -> np.ndarray:
        """Returns the RMSNorm weight before block ``index``'s attention."""

    def final_norm(self) -> np.ndarray:
        """Returns the last RMSNorm's weight."""

    def rotary(self) -> tuple[np.ndarray, np.ndarray]:
        """Returns the rotary cos and sin caches, (context, head_dim / 2) each."""

    def layer(self, index: int) -> LayerWeights:
        """Returns one block's weights."""


@dataclass
class DecoderFiles:
    """What ``write_decoder`` wrote: the graph, its weights file and what it holds."""

    model: Path
    data: Path
    details: dict = field(default_factory=dict)


class _Weights:
    """Initializers streamed into the external data file as they are made."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.file = path.open("wb")
        self.initializers: list[onnx.TensorProto] = []
        self.bytes_by_part: dict[str, int] = {}

    def add(self, name: str, array: np.ndarray, part: str) -> str:
        array = np.ascontiguousarray(array)
        self.bytes_by_part[part] = self.bytes_by_part.get(part, 0) + array.nbytes
        if array.nbytes < INLINE_BYTES:  # shapes and axes stay in the graph, where shape inference reads them
            self.initializers.append(numpy_helper.from_array(array, name))
            return name
        tensor = onnx.TensorProto(name=name, dims=list(array.shape),
                                  data_type=helper.np_dtype_to_tensor_dtype(array.dtype))
        offset = self.file.tell()
        pad = (-offset) % 64  # aligned, so a runtime may map the weights in place
        self.file.write(b"\0" * pad)
        self.file.write(array.tobytes())
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (("location", self.path.name), ("offset", str(offset + pad)), ("length", str(array.nbytes))):
            tensor.external_data.add(key=key, value=value)
        self.initializers.append(tensor)
        return name

    def close(self) -> None:
        self.file.close()


def _pad_heads(w: np.ndarray, heads: int, dim: int, padded: int, axis: int) -> np.ndarray:
    """Returns ``w`` with each head's ``dim`` entries along ``axis`` laid out as two rotary halves of
    ``padded / 2``, zeros after each half (pair i of the halves stays pair i)."""
    if padded == dim:
        return w
    moved = np.moveaxis(w, axis, 0)
    rest = moved.shape[1:]
    halves = moved.reshape(heads, 2, dim // 2, *rest)
    out = np.zeros((heads, 2, padded // 2, *rest), dtype=w.dtype)
    out[:, :, : dim // 2] = halves
    return np.moveaxis(out.reshape(heads * padded, *rest), 0, axis)


class _Graph:
    """The decoder's nodes, added in order, with the projection kind the precision asks for."""

    def __init__(self, weights: _Weights, precision: str, weight_only: WeightOnly | None) -> None:
        self.w = weights
        self.precision = precision
        self.weight_only = weight_only
        self.nodes: list[onnx.NodeProto] = []
        self.dtype = _NUMPY.get(precision, np.float32)

    def node(self, op: str, inputs: list[str], outputs: list[str], name: str, domain: str = "", **attrs) -> list[str]:
        self.nodes.append(helper.make_node(op, inputs, outputs, name=name, domain=domain, **attrs))
        return outputs

    def const(self, name: str, array: np.ndarray, part: str) -> str:
        return self.w.add(name, array.astype(self.dtype) if array.dtype.kind == "f" else array, part)

    def project(self, x: str, weight: np.ndarray, name: str, part: str, bias: np.ndarray | None = None) -> str:
        """Returns the output of ``x @ weight.T`` (+ bias): weight is (out, in), torch's Linear layout."""
        y = f"/{name}/output_0"
        if self.weight_only is None:
            w = self.const(f"{name}.weight", weight.T, part)
            self.node("MatMul", [x, w], [y], f"/{name}/MatMul")
        else:
            self.quantized(x, y, quantize_matrix(weight.T, self.weight_only), name, part)
        if bias is not None:
            b = self.const(f"{name}.bias", bias, part)
            y = self.node("Add", [y, b], [f"/{name}/Add/output_0"], f"/{name}/Add")[0]
        return y

    def quantized(self, x: str, y: str, matrix: QuantizedMatrix, name: str, part: str,
                  names: tuple[str, str, str] | None = None) -> None:
        names = names or self.store(matrix, name, part)
        self.nodes.append(matmul_nbits_node(x, y, f"/{name}/MatMulNBits", matrix, names))

    def store(self, matrix: QuantizedMatrix, name: str, part: str) -> tuple[str, str, str]:
        """Returns the names of a quantized matrix's packed blocks, scales and zero points, written."""
        return (self.w.add(f"{name}.weight_Q{matrix.config.bits}", matrix.packed, part),
                self.w.add(f"{name}.weight_scales", matrix.scales.astype(self.dtype), part),
                self.w.add(f"{name}.weight_zp", matrix.zero_points, part) if matrix.zero_points is not None else "")


def write_decoder(source: DecoderSource, folder: Path, precision: str, weight_only: WeightOnly | None = None,
                  compute: str | None = None) -> DecoderFiles:
    """Returns the decoder written into ``folder`` as ``model.onnx`` + ``model.onnx.data``.

    ``precision``: fp32 or fp16 weights and compute, or int4/int8 weights (``weight_only``
    says how) computed in ``compute`` (fp32, the default, or fp16 for GPUs; activations, the
    KV cache and the logits take that type). Embeddings are quantized with the projections
    (int4/int8, one copy shared with a tied LM head); norms and rotary caches stay in the
    compute type.
    """
    s = source.shape
    if precision in ("int4", "int8") and weight_only is None:
        weight_only = WeightOnly(bits=4 if precision == "int4" else 8)
    compute = compute or ("fp16" if precision == "fp16" else "fp32")
    hd, hdp = s.head_dim, s.padded_head_dim
    folder.mkdir(parents=True, exist_ok=True)
    with _open_weights(folder / DATA_FILE) as weights:
        g = _Graph(weights, compute, weight_only if precision in ("int4", "int8") else None)
        elem = _ELEM[compute]
        ids, mask = "input_ids", "attention_mask"
        one = g.const("one_i64", np.array([1], dtype=np.int64), "graph")
        total = g.node("ReduceSum", [mask, one], ["/mask/ReduceSum/output_0"], "/mask/ReduceSum", keepdims=0)[0]
        seqlens = g.node("Sub", [total, one], ["/mask/Sub/output_0"], "/mask/Sub")[0]
        seqlens = g.node("Cast", [seqlens], ["seqlens_k"], "/mask/Cast", to=TensorProto.INT32)[0]
        shape = g.node("Shape", [mask], ["/mask/Shape/output_0"], "/mask/Shape")[0]
        length = g.node("Gather", [shape, g.const("one_scalar_i64", np.array(1, dtype=np.int64), "graph")],
                        ["/mask/Gather/output_0"], "/mask/Gather", axis=0)[0]
        length = g.node("Cast", [length], ["total_sequence_length"], "/mask/Cast_1", to=TensorProto.INT32)[0]
        cos, sin = source.rotary()
        pad = hdp // 2 - cos.shape[1]
        cos = np.pad(cos, ((0, 0), (0, pad)), constant_values=1.0)
        sin = np.pad(sin, ((0, 0), (0, pad)), constant_values=0.0)
        cos_cache, sin_cache = g.const("cos_cache", cos, "rotary"), g.const("sin_cache", sin, "rotary")

        embedding = source.embedding()
        head = source.lm_head()
        head_matrix = head_names = None
        if g.weight_only is not None:
            head_matrix = quantize_matrix((embedding if head is None else head).T, g.weight_only)
            head_names = g.store(head_matrix, "lm_head", "lm_head")
            if head is None:  # tied: the embedding reads the LM head's blocks
                x = _quantized_gather(g, head_matrix, head_names, ids, s, "embed_tokens")
            else:
                matrix = quantize_matrix(embedding.T, g.weight_only)
                x = _quantized_gather(g, matrix, g.store(matrix, "model.embed_tokens", "embedding"), ids, s,
                                      "embed_tokens")
        else:
            table = g.const("model.embed_tokens.weight", embedding, "embedding")
            x = g.node("Gather", [table, ids], ["/model/embed_tokens/Gather/output_0"], "/model/embed_tokens/Gather")[0]
        del embedding

        residual = x
        h = g.node("SimplifiedLayerNormalization", [x, g.const("model.layers.0.input_layernorm.weight",
                                                                  source.input_norm(0), "norms")],
                   ["/model/layers.0/input_layernorm/output_0"], "/model/layers.0/input_layernorm/LayerNorm",
                   axis=-1, epsilon=s.eps, stash_type=1)[0]
        for i in range(s.layers):
            lw = source.layer(i)
            p = f"model.layers.{i}"
            qkv = np.concatenate([_pad_heads(lw.q, s.heads, hd, hdp, 0), _pad_heads(lw.k, s.kv_heads, hd, hdp, 0),
                                  _pad_heads(lw.v, s.kv_heads, hd, hdp, 0)])
            bias = (np.concatenate([_pad_heads(b, n, hd, hdp, 0) for b, n in
                                    ((lw.q_bias, s.heads), (lw.k_bias, s.kv_heads), (lw.v_bias, s.kv_heads))])
                    if s.qkv_bias else None)
            q = g.project(h, qkv, f"{p}.attn.qkv_proj", "attention", bias)
            del qkv
            attn = g.node("GroupQueryAttention",
                          [q, "", "", f"past_key_values.{i}.key", f"past_key_values.{i}.value", seqlens, length,
                           cos_cache, sin_cache],
                          [f"/{p}/attn/GroupQueryAttention/output_0", f"present.{i}.key", f"present.{i}.value"],
                          f"/{p}/attn/GroupQueryAttention", domain="com.microsoft", num_heads=s.heads,
                          kv_num_heads=s.kv_heads, scale=1.0 / math.sqrt(hd), do_rotary=1, rotary_interleaved=0,
                          local_window_size=-1)[0]
            o = g.project(attn, _pad_heads(lw.o, s.heads, hd, hdp, 1), f"{p}.attn.o_proj", "attention")
            h, residual = _skip_norm(g, residual, o, g.const(f"{p}.post_attention_layernorm.weight", lw.post_norm,
                                                             "norms"), f"/{p}/post_attention_layernorm", s.eps)
            gate = g.project(h, lw.gate, f"{p}.mlp.gate_proj", "mlp")
            sig = g.node("Sigmoid", [gate], [f"/{p}/mlp/act_fn/Sigmoid/output_0"], f"/{p}/mlp/act_fn/Sigmoid")[0]
            act = g.node("Mul", [gate, sig], [f"/{p}/mlp/act_fn/Mul/output_0"], f"/{p}/mlp/act_fn/Mul")[0]
            up = g.project(h, lw.up, f"{p}.mlp.up_proj", "mlp")
            both = g.node("Mul", [act, up], [f"/{p}/mlp/Mul/output_0"], f"/{p}/mlp/Mul")[0]
            down = g.project(both, lw.down, f"{p}.mlp.down_proj", "mlp")
            if i + 1 < s.layers:
                norm = g.const(f"model.layers.{i + 1}.input_layernorm.weight", source.input_norm(i + 1), "norms")
                name = f"/model/layers.{i + 1}/input_layernorm"
            else:
                norm, name = g.const("model.norm.weight", source.final_norm(), "norms"), "/model/norm"
            h, residual = _skip_norm(g, residual, down, norm, name, s.eps)
        if head_matrix is not None:
            g.quantized(h, "logits", head_matrix, "lm_head", "lm_head", head_names)
        elif head is None:  # tied: the embedding table, read transposed by Gemm
            flat = g.node("Reshape", [h, g.const("hidden_2d", np.array([-1, s.hidden], dtype=np.int64), "graph")],
                          ["/lm_head/Reshape/output_0"], "/lm_head/Reshape")[0]
            out = g.node("Gemm", [flat, "model.embed_tokens.weight"], ["/lm_head/Gemm/output_0"], "/lm_head/Gemm",
                         transB=1)[0]
            dims = g.node("Shape", [ids], ["/lm_head/Shape/output_0"], "/lm_head/Shape")[0]
            full = g.node("Concat", [dims, g.const("vocab_1d", np.array([s.vocab], dtype=np.int64), "graph")],
                          ["/lm_head/Concat/output_0"], "/lm_head/Concat", axis=0)[0]
            g.node("Reshape", [out, full], ["logits"], "/lm_head/Reshape_1")
        else:
            g.node("MatMul", [h, g.const("lm_head.weight", head.T, "lm_head")], ["logits"], "/lm_head/MatMul")
        initializers, parts = weights.initializers, weights.bytes_by_part
    kv = ["batch_size", s.kv_heads, "past_sequence_length", hdp]
    kv_out = ["batch_size", s.kv_heads, "total_sequence_length", hdp]
    inputs = [helper.make_tensor_value_info(ids, TensorProto.INT64, ["batch_size", "sequence_length"]),
              helper.make_tensor_value_info(mask, TensorProto.INT64, ["batch_size", "total_sequence_length"])]
    outputs = [helper.make_tensor_value_info("logits", elem, ["batch_size", "sequence_length", s.vocab])]
    for i in range(s.layers):
        for kind in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(f"past_key_values.{i}.{kind}", elem, kv))
            outputs.append(helper.make_tensor_value_info(f"present.{i}.{kind}", elem, kv_out))
    graph = helper.make_graph(g.nodes, "decoder", inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=OPSET, producer_name="edgeprune")
    path = folder / "model.onnx"
    onnx.save_model(model, str(path))
    details = {"layout": "onnxruntime-genai decoder (past_key_values.N / present.N, GroupQueryAttention)",
               "precision": precision, "compute": compute, "head_size": hdp, "bytes_by_part": parts,
               **({"weights": weight_only.to_dict(), "quantization": weight_only.describe()}
                  if g.weight_only is not None else {})}
    if hdp != hd:
        details["head_padding"] = (f"head size {hd} padded to {hdp} with zeros: ONNX Runtime's GroupQueryAttention "
                                   f"CPU kernel takes multiples of {HEAD_MULTIPLE}; the KV cache is {hdp / hd:.2f}x "
                                   "the unpadded size")
    return DecoderFiles(path, folder / DATA_FILE, details)


@contextmanager
def _open_weights(path: Path) -> Iterator[_Weights]:
    weights = _Weights(path)
    try:
        yield weights
    finally:
        weights.close()


def _skip_norm(g: _Graph, residual: str, x: str, weight: str, name: str, eps: float) -> tuple[str, str]:
    """Returns (normalized residual + x, residual + x): one SkipSimplifiedLayerNormalization."""
    outs = g.node("SkipSimplifiedLayerNormalization", [residual, x, weight],
                  [f"{name}/output_0", "", "", f"{name}/output_3"], f"{name}/SkipLayerNorm", domain="com.microsoft",
                  epsilon=eps)
    return outs[0], outs[3]


def _quantized_gather(g: _Graph, matrix: QuantizedMatrix, names: tuple[str, str, str], ids: str, s: DecoderShape,
                      name: str) -> str:
    """Returns the embeddings of ``ids`` read from block-quantized rows (GatherBlockQuantized).

    The rows are a MatMulNBits matrix's own blocks (vocab, blocks, bytes) seen as (vocab,
    blocks x bytes), so a tied LM head and the embedding share one copy.
    """
    vocab, blocks, blob = matrix.packed.shape
    rows = g.const(f"{name}_rows_shape", np.array([vocab, blocks * blob], dtype=np.int64), "graph")
    data = g.node("Reshape", [names[0], rows], [f"/model/{name}/Reshape/output_0"], f"/model/{name}/Reshape")[0]
    scales = g.node("Reshape", [names[1], g.const(f"{name}_scales_shape", np.array([vocab, blocks], dtype=np.int64),
                                                  "graph")],
                    [f"/model/{name}/Reshape_1/output_0"], f"/model/{name}/Reshape_1")[0]
    inputs = [data, ids, scales]
    if names[2]:
        inputs.append(g.node("Reshape", [names[2], g.const(f"{name}_zp_shape", np.array([vocab, -1], dtype=np.int64),
                                                            "graph")],
                             [f"/model/{name}/Reshape_2/output_0"], f"/model/{name}/Reshape_2")[0])
    out = g.node("GatherBlockQuantized", inputs, [f"/model/{name}/GatherBlockQuantized/output_0"],
                 f"/model/{name}/GatherBlockQuantized", domain="com.microsoft", bits=matrix.config.bits,
                 block_size=matrix.config.block_size, gather_axis=0, quantize_axis=1)[0]
    if blocks * matrix.config.block_size == s.hidden:
        return out
    starts, ends, axes = (g.const(f"{name}_slice_{k}", np.array([v], dtype=np.int64), "graph")
                          for k, v in (("start", 0), ("end", s.hidden), ("axis", -1)))
    return g.node("Slice", [out, starts, ends, axes], [f"/model/{name}/Slice/output_0"], f"/model/{name}/Slice")[0]
