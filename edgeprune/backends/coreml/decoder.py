"""A causal LM as a stateful Core ML decoder: the key/value cache is model state, weights int4.

Follows coremltools' "Stateful Models" guide and Apple's on-device Llama 3.1 example
(``SliceUpdateKeyValueCache``): the cache is two registered buffers that the forward pass
writes in place at the positions it is fed, and the converter turns them into
``ct.StateType`` states (iOS18, mlprogram). The query length and the mask's end are
flexible, so one model serves prefill and decode. The decoder block is written here from
the model's own modules (norms, projections, MLP, rotary frequencies) rather than by driving
transformers' attention with a cache object, so the traced graph does not depend on the
transformers version's cache and mask plumbing.
"""

from __future__ import annotations

import copy
import math
import platform
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgeprune.backends.coreml.convert import coreml_target, import_coremltools, quiet
from edgeprune.errors import UnsupportedError

PACKAGE = "decoder.mlpackage"
TARGET = "iOS18"  # states and per-block int4 weights both arrive with iOS18 / macOS15
STATES = ("key_cache", "value_cache")
INPUTS = ("input_ids", "causal_mask")
OUTPUT = "logits"


class KVCacheDecoder(torch.nn.Module):
    """A LLaMA-family causal LM (LLaMA, Mistral, Qwen2) whose key/value cache is two buffers.

    ``key_cache`` and ``value_cache`` have shape (layers, 1, kv_heads, max_context, head_dim).
    forward(input_ids (1, q), causal_mask (1, 1, q, end)) attends over positions [0, end),
    writes the new keys and values at [end - q, end) and returns logits (1, q, vocab). The
    mask is additive (0 where a query may look, -inf elsewhere): ``causal_mask_for`` builds it.
    Widths are read from the modules' weights, so a pruned model (fewer heads, narrower FFN
    or hidden width, uniform across layers) works as it is. ``dtype`` is the buffers' (the
    model's by default); the converted package keeps its states in fp16 whatever was traced.
    """

    def __init__(self, lm: torch.nn.Module, max_context: int = 512,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        base = getattr(lm, "model", None)
        layers = getattr(base, "layers", None)
        if layers is None or not hasattr(lm, "lm_head") or not hasattr(layers[0], "self_attn") \
                or not hasattr(layers[0].self_attn, "q_proj"):
            raise UnsupportedError(f"{type(lm).__name__} is not a LLaMA-family causal LM "
                                   "(model.layers[i].self_attn.q_proj, lm_head)")
        attn = layers[0].self_attn
        if hasattr(attn, "q_norm"):
            raise UnsupportedError(f"{type(lm).__name__} normalizes queries and keys per head "
                                   "(Qwen3-style), which the Core ML decoder does not build")
        self.lm = lm.eval()
        config = lm.config
        self.head_dim = int(getattr(attn, "head_dim", None)
                            or config.hidden_size // config.num_attention_heads)
        self.heads, self.kv_heads = (attn.q_proj.out_features // self.head_dim,
                                     attn.k_proj.out_features // self.head_dim)
        if self.heads * self.head_dim != attn.q_proj.out_features or self.heads % self.kv_heads:
            raise UnsupportedError(f"q_proj has {attn.q_proj.out_features} rows and k_proj "
                                   f"{attn.k_proj.out_features}: not whole heads of {self.head_dim}"
                                   ", or query heads not a multiple of key/value heads")
        scaling = float(getattr(attn, "scaling", self.head_dim**-0.5))
        # Only an explicit scale keeps coremltools from the fused iOS18 attention op.
        self.scale = None if math.isclose(scaling, self.head_dim**-0.5) else scaling
        self.max_context = max_context
        dtype = dtype or next(lm.parameters()).dtype
        shape = (len(layers), 1, self.kv_heads, max_context, self.head_dim)
        self.register_buffer("key_cache", torch.zeros(shape, dtype=dtype))
        self.register_buffer("value_cache", torch.zeros(shape, dtype=dtype))
        # cos/sin of every position as tables, not computed in the graph: Core ML computes in
        # fp16, where position x frequency loses whole radians past a few hundred positions.
        # The rotary module's inv_freq and scaling already carry the config's rope type and theta.
        rotary = base.rotary_emb
        positions = torch.arange(max_context, dtype=torch.float64)[:, None]
        angles = positions * rotary.inv_freq.double()[None]
        angles = torch.cat((angles, angles), dim=-1)
        scale = float(getattr(rotary, "attention_scaling", 1.0))
        self.register_buffer("rope_cos", (angles.cos() * scale).to(dtype), persistent=False)
        self.register_buffer("rope_sin", (angles.sin() * scale).to(dtype), persistent=False)

    def forward(self, input_ids: torch.Tensor, causal_mask: torch.Tensor) -> torch.Tensor:
        """Returns the logits (1, q, vocab) of the q tokens, after writing their keys and values."""
        base = self.lm.model
        end = causal_mask.shape[-1]
        past = end - input_ids.shape[-1]  # traced from the shapes, so it stays symbolic in Core ML
        cos, sin = self.rope_cos[past:end], self.rope_sin[past:end]
        hidden = base.embed_tokens(input_ids)
        for index, layer in enumerate(base.layers):
            hidden = hidden + self._attend(index, layer.self_attn, layer.input_layernorm(hidden),
                                           cos, sin, causal_mask, past, end)
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        return self.lm.lm_head(base.norm(hidden))

    def _attend(self, index: int, attn: torch.nn.Module, x: torch.Tensor, cos: torch.Tensor,
                sin: torch.Tensor, mask: torch.Tensor, past: int, end: int) -> torch.Tensor:
        """Returns the attention block's output for x, the cache updated at [past, end)."""
        heads, kv_heads, head_dim = self.heads, self.kv_heads, self.head_dim
        query = _rotate(attn.q_proj(x).view(1, -1, heads, head_dim).transpose(1, 2), cos, sin)
        key = _rotate(attn.k_proj(x).view(1, -1, kv_heads, head_dim).transpose(1, 2), cos, sin)
        value = attn.v_proj(x).view(1, -1, kv_heads, head_dim).transpose(1, 2)
        # The slice assignment is what coremltools lowers to slice_update + coreml_update_state.
        self.key_cache[index, :, :, past:end, :] = key.to(self.key_cache.dtype)
        self.value_cache[index, :, :, past:end, :] = value.to(self.value_cache.dtype)
        keys = self.key_cache[index, :, :, :end, :].to(query.dtype)
        values = self.value_cache[index, :, :, :end, :].to(query.dtype)
        # GQA without copying the cache per query head: the query heads of one key/value head
        # become extra query rows (1, kv_heads, groups x q, head_dim), the mask repeated to match.
        groups = heads // kv_heads
        query = query.reshape(1, kv_heads, -1, head_dim)
        mask = mask.repeat(1, 1, groups, 1) if groups > 1 else mask
        out = torch.nn.functional.scaled_dot_product_attention(
            query, keys, values, attn_mask=mask, scale=self.scale)
        out = out.reshape(1, heads, -1, head_dim).transpose(1, 2)
        out = out.reshape(1, -1, heads * head_dim)
        return attn.o_proj(out)


def causal_mask_for(query: int, end: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Returns the additive mask (1, 1, query, end) for queries at positions [end - query, end)."""
    mask = torch.full((query, end), float("-inf"), dtype=dtype)
    return torch.triu(mask, diagonal=end - query + 1)[None, None]


def convert_decoder(lm: torch.nn.Module, folder: Path, max_context: int = 512,
                    block_size: int = 32, compress: bool = True) -> tuple[Path, dict]:
    """Returns (path of decoder.mlpackage, details): the LM as a stateful iOS18 model, int4 weights
    (fp16 with ``compress`` False).

    details: the states (name, shape, dtype), max_context, block_size, how many weights are
    stored int4 and how many linear/embedding weights are left fp16, the package's size in
    bytes and the deployment target. Raises UnsupportedError when block_size does not divide
    a linear layer's input width (coremltools would leave that weight fp16 without a word).
    """
    ct = import_coremltools()
    import coremltools.optimize.coreml as cto

    uneven = sorted({m.in_features for m in lm.modules()
                     if isinstance(m, torch.nn.Linear) and m.in_features % block_size})
    if uneven and compress:
        raise UnsupportedError(f"int4 blocks of {block_size} do not divide the input widths "
                               f"{uneven}: choose a block size that divides every linear layer's")
    if next(lm.parameters()).dtype != torch.float32:
        lm = copy.deepcopy(lm).float()  # coremltools' fp16 pass starts from an fp32 graph
    # Buffers in fp32 for the trace; the states are declared fp16 below, as Core ML keeps them.
    wrapper = KVCacheDecoder(lm, max_context=max_context).eval()
    # A chunk of 2 tokens after 3 cached ones (Apple's example): the write offset is not 0.
    example = (torch.zeros((1, 2), dtype=torch.long), causal_mask_for(2, 5))
    with quiet(), torch.no_grad():
        traced = torch.jit.trace(wrapper, example)
    query = ct.RangeDim(lower_bound=1, upper_bound=max_context, default=1)
    end = ct.RangeDim(lower_bound=1, upper_bound=max_context, default=1)
    shape = tuple(wrapper.key_cache.shape)
    with quiet():
        mlmodel = ct.convert(
            traced,
            inputs=[ct.TensorType(name=INPUTS[0], shape=(1, query), dtype=np.int32),
                    ct.TensorType(name=INPUTS[1], shape=(1, 1, query, end), dtype=np.float16)],
            outputs=[ct.TensorType(name=OUTPUT, dtype=np.float16)],
            states=[ct.StateType(wrapped_type=ct.TensorType(shape=shape, dtype=np.float16),
                                 name=name) for name in STATES],
            minimum_deployment_target=coreml_target(TARGET), convert_to="mlprogram",
            compute_precision=ct.precision.FLOAT16, skip_model_load=platform.system() != "Darwin",
        )
        # Only the linear matrices and the embedding table, by name: a global config would also
        # quantize biases (a scale per element, no saving) and the rotary tables.
        int4 = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int4",
                                           granularity="per_block", block_size=block_size,
                                           weight_threshold=0)
        names = {_op_name(op) for op in _weight_producers(mlmodel.get_spec())
                 if op.type == "const"}
        if compress:
            mlmodel = cto.linear_quantize_weights(
                mlmodel, cto.OptimizationConfig(op_name_configs=dict.fromkeys(names, int4)))
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / PACKAGE
        mlmodel.save(str(path))
    described = describe_decoder(path)
    return path, {
        "states": described["states"], "max_context": max_context, "block_size": block_size,
        "int4_weights": described["weights"]["int4"], "fp16_weights": described["weights"]["fp16"],
        "size_bytes": described["size_bytes"], "weight_bytes": described["weight_bytes"],
        "deployment_target": TARGET,
        "captured_with": "torch.jit.trace",
    }


def describe_decoder(package: Path) -> dict:
    """Returns what a saved decoder package holds, read from its spec (no Apple hardware needed).

    states: name, shape and element type of each; inputs, input_ranges, outputs;
    specification_version, the deployment_target it stands for, opset; op_counts; weights:
    how the linear matrices and embedding tables are stored, "int4" (a
    constexpr_blockwise_shift_scale op with int4 data), "fp16" (a plain const) or "other",
    with the block sizes of the int4 ones; size_bytes of the package, weight_bytes of its
    weight file.
    """
    ct = import_coremltools()
    from coremltools.proto import FeatureTypes_pb2, MIL_pb2

    spec = ct.models.MLModel(str(package), skip_model_load=True).get_spec()
    array = FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.Name
    element = MIL_pb2.DataType.Name
    states = [{"name": s.name, "shape": tuple(s.type.stateType.arrayType.shape),
               "dtype": array(s.type.stateType.arrayType.dataType)} for s in spec.description.state]
    int4, fp16, other, blocks = 0, 0, 0, set()
    for op in _weight_producers(spec):
        data, scale = _operand(op, "data"), _operand(op, "scale")
        is_int4 = data is not None and element(data.dataType) == "INT4"
        if op.type == "constexpr_blockwise_shift_scale" and is_int4:
            int4 += 1
            # One scale per block: the data's extent over the scale's, on the axis blocks split.
            pairs = zip(data.dimensions, scale.dimensions, strict=True)
            blocks.update(d.constant.size // s.constant.size for d, s in pairs
                          if 1 < s.constant.size < d.constant.size)
        elif op.type == "const" and element(op.outputs[0].type.tensorType.dataType) == "FLOAT16":
            fp16 += 1
        else:
            other += 1
    function = spec.mlProgram.functions["main"]
    ops = function.block_specializations[function.opset].operations
    files = [f for f in Path(package).rglob("*") if f.is_file()]
    return {
        "states": states,
        "inputs": [i.name for i in spec.description.input],
        # (lower, upper) of each dimension: a flexible query length shows as (1, max_context)
        "input_ranges": {i.name: [(r.lowerBound, r.upperBound)
                                  for r in i.type.multiArrayType.shapeRange.sizeRanges]
                         for i in spec.description.input},
        "outputs": [o.name for o in spec.description.output],
        "specification_version": spec.specificationVersion,
        "deployment_target": ct.target(spec.specificationVersion).name,
        "opset": function.opset,
        "op_counts": dict(Counter(op.type for op in ops)),
        "weights": {"int4": int4, "fp16": fp16, "other": other, "block_sizes": sorted(blocks)},
        "size_bytes": sum(f.stat().st_size for f in files),
        "weight_bytes": sum(f.stat().st_size for f in files if f.parent.name == "weights"),
    }


def _weight_producers(spec: Any) -> list[Any]:
    """Returns the ops (const or constexpr) that give linear layers their matrices and gathers
    their embedding tables, each once (a tied embedding feeds both)."""
    from coremltools.proto import MIL_pb2

    function = spec.mlProgram.functions["main"]
    ops = function.block_specializations[function.opset].operations
    producers = {out.name: op for op in ops for out in op.outputs}
    floats = {MIL_pb2.DataType.Value("FLOAT16"), MIL_pb2.DataType.Value("FLOAT32")}  # no indices
    found: dict[str, Any] = {}
    for op in ops:
        role = {"linear": "weight", "matmul": "y", "gather": "x"}.get(op.type, "")
        for arg in op.inputs[role].arguments if role in op.inputs else ():
            source = producers.get(arg.name)
            if source is None:
                continue
            dtype = source.outputs[0].type.tensorType.dataType
            if source.type.startswith("constexpr_") or (source.type == "const" and dtype in floats):
                found[arg.name] = source
    return list(found.values())


def _op_name(op: Any) -> str:
    """Returns the MIL op's own name (what op_name_configs keys on), not its output's."""
    return op.attributes["name"].immediateValue.tensor.strings.values[0]


def _operand(op: Any, key: str) -> Any:
    """Returns the tensor type of an op's inline operand (iOS18 constexpr ops), or None."""
    for arg in op.inputs[key].arguments if key in op.inputs else ():
        if arg.HasField("value"):
            return arg.value.type.tensorType
    return None


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Returns x (1, heads, q, head_dim) with rotary position embedding applied."""
    first, second = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-second, first), dim=-1) * sin
