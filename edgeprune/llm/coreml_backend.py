"""The Core ML backend of a causal LM: a stateful decoder (the KV cache as model state) with int4 weights.

Registered for format ``coreml`` and task ``causal-lm``. The package
(``edgeprune.backends.coreml.decoder``) targets iOS 18, where stateful models and per-block
int4 weights arrive; it converts and is checked structurally here (its states, their shapes
and types, every linear weight's storage) and runs only on Apple hardware, so its speed is
estimated from the profile.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from edgeprune.backends.base import (
    Artifact,
    Inputs,
    LowerRequest,
    check_palettize,
    check_precision,
    register_backend,
)
from edgeprune.backends.coreml.decoder import STATES, TARGET, convert_decoder, describe_decoder
from edgeprune.errors import UnsupportedError
from edgeprune.llm.decoder import CausalLMDecoder, kv_cache_unsupported
from edgeprune.llm.onnx_backend import decoder_context
from edgeprune.tasks import CAUSAL_LM, find_causal_lm
from edgeprune.uploads import UploadModel
from edgeprune.verify import Verification, structural

# per-block int4: the largest of these that divides every linear layer's input width
BLOCK_SIZES = (32, 16, 8)


@register_backend("coreml", task=CAUSAL_LM)
class CoreMLDecoderBackend:
    """Lowers a transformers LLaMA-family causal LM to a stateful ``decoder.mlpackage`` (iOS 18)."""

    name = "coreml"
    task = CAUSAL_LM
    precisions = frozenset({"fp16", "int4"})
    sparsity_storage = frozenset({"structured"})
    computes_int8 = False

    def check(self, request: LowerRequest) -> None:
        check_precision(self, request)
        check_palettize(self, request)

    def preflight(self, model: torch.nn.Module, example_inputs: Inputs, request: LowerRequest) -> None:
        reason = kv_cache_unsupported(_lm(model))
        if reason is not None:
            raise UnsupportedError(f"no stateful Core ML decoder: {reason}")

    def lower(self, model: torch.nn.Module, example_inputs: Inputs, request: LowerRequest, out_dir: Path) -> Artifact:
        self.preflight(model, example_inputs, request)
        lm = _lm(model)
        context = decoder_context(lm, request.options.get("context"))
        source = CausalLMDecoder(lm, context)
        widths = {m.in_features for m in lm.modules() if isinstance(m, torch.nn.Linear)}
        block = next((b for b in BLOCK_SIZES if all(w % b == 0 for w in widths)), None)
        if request.precision == "int4" and block is None:
            raise UnsupportedError(f"no int4 block size of {BLOCK_SIZES} divides the input widths {sorted(widths)}")
        path, details = convert_decoder(lm, out_dir, max_context=context, block_size=block or BLOCK_SIZES[0],
                                        compress=request.precision == "int4")
        s = source.shape
        weight_bytes = details["weight_bytes"]
        details.update({"layers": s.layers, "hidden": s.hidden, "heads": s.heads, "kv_heads": s.kv_heads,
                        "head_size": s.head_dim, "vocab": s.vocab, "context": context,
                        "matmul_params": s.matmul_params(), "weight_bytes": weight_bytes,
                        "kv_element_bytes": 2, "compute_precision": "fp16", "weight_precision": request.precision})
        notes = [f"stateful Core ML decoder for {TARGET}: the KV cache is model state ({', '.join(STATES)}), "
                 f"context {context}"]
        if request.precision == "int4":
            notes.append(f"weights: int4 per block of {block} (coremltools linear_quantize_weights, symmetric)")
        if request.profile.min_deployment_target and request.profile.min_deployment_target != TARGET:
            notes.append(f"needs {TARGET} (stateful models, per-block int4), above profile "
                         f"{request.profile.name}'s {request.profile.min_deployment_target}")
        return Artifact(format=self.name, precision=request.precision, path=path, files=[path], notes=notes,
                        task=CAUSAL_LM, details={"decoder": details},
                        evaluated_on="nothing here: Core ML runs only on Apple hardware")

    def predictor(self, artifact: Artifact) -> Callable[..., torch.Tensor] | None:
        return None

    def cannot_run_reason(self) -> str | None:
        return "a stateful Core ML decoder runs only on Apple hardware (iOS 18 / macOS 15)"

    def upload(self, artifact: Artifact) -> UploadModel:
        raise UnsupportedError("a device agent does not run stateful Core ML decoders yet")

    def verify_structure(self, artifact: Artifact, model: torch.nn.Module, request: LowerRequest) -> Verification:
        """Returns the package's checks: two fp16 states of the cache's shape, iOS 18, every linear weight int4."""
        found = describe_decoder(artifact.path)
        d = artifact.details["decoder"]
        shape = [d["layers"], 1, d["kv_heads"], d["context"], d["head_size"]]
        states = {s["name"]: s for s in found["states"]}
        weights = found["weights"]
        checks = [(f"states {', '.join(STATES)} hold the KV cache, fp16, shape {shape}",
                   all(list(states.get(n, {}).get("shape", ())) == shape and states[n].get("dtype") == "FLOAT16"
                       for n in STATES)),
                  (f"the spec targets {TARGET}", found.get("deployment_target") == TARGET)]
        if request.precision == "int4":
            checks.append((f"every linear and embedding weight is int4 per block ({weights['int4']} of them)",
                           weights["int4"] > 0 and weights["fp16"] == 0))
        return structural(checks)


def _lm(model: torch.nn.Module) -> torch.nn.Module:
    found = find_causal_lm(model)
    if found is None:
        raise UnsupportedError(f"{type(model).__name__} holds no transformers causal LM to write as a decoder")
    return found[1]

