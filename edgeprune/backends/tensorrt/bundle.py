"""The TensorRT hand-off bundle: what the device needs to build its own engine.

A TensorRT engine is specific to one GPU model and one TensorRT version, so a build on
another machine ships the recipe, not the engine:

    tensorrt/
      model.onnx        static shapes; explicit Q/DQ for int8
      build_engine.sh   the exact trtexec command (precision, sparsity, timing cache)
      reference.npz     inputs and PyTorch outputs, so the device verifies its engine
      bundle.json       what was asked for, the ONNX hash, tensor names and shapes

``edgeprune trt-build tensorrt/`` builds the same engine through the tensorrt Python API
instead, caches it, verifies it against reference.npz and reports the sparse tactics.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch

from edgeprune import __version__
from edgeprune.errors import InputError, UnsupportedError

BUNDLE_DIR = "tensorrt"
MANIFEST = "bundle.json"
ONNX_FILE = "model.onnx"
SCRIPT = "build_engine.sh"
REFERENCE = "reference.npz"
ENGINE = "model.engine"
TIMING_CACHE = "timing.cache"
LAYER_INFO = "layers.json"

# ONNX operators TensorRT's ONNX parser lists as unsupported in every release of its support
# matrix (onnx-tensorrt docs/operators.md, TensorRT 7.x through 8.5): integer-op quantization
# (TensorRT takes Q/DQ instead), and host-side or sequence operators. Anything outside the
# default ONNX domain needs a plugin. TensorRT's own parser has the last word in trt-build.
TENSORRT_UNSUPPORTED = frozenset({
    "ConvInteger", "MatMulInteger", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul",
    "Det", "Unique", "StringNormalizer", "TfIdfVectorizer", "Compress", "ConcatFromSequence",
    "SplitToSequence", "SequenceAt", "SequenceConstruct", "SequenceEmpty", "SequenceErase",
    "SequenceInsert", "SequenceLength", "MaxRoiPool", "MaxUnpool", "Multinomial",
})


@dataclass(frozen=True)
class BundleSpec:
    """What bundle.json records: the request, the ONNX file's identity, its tensors."""

    precision: str
    sparsity: str  # "2:4" when TensorRT should look for sparse tactics, else "none"
    onnx_sha256: str
    inputs: list[dict] = field(default_factory=list)
    outputs: list[dict] = field(default_factory=list)
    profile: str = ""
    tolerance: str = ""
    edgeprune_version: str = __version__
    onnx: str = ONNX_FILE
    engine: str = ENGINE
    timing_cache: str = TIMING_CACHE
    reference: str = REFERENCE

    def to_dict(self) -> dict:
        """Returns the manifest as written to bundle.json."""
        return asdict(self)


def trtexec_command(spec: BundleSpec) -> list[str]:
    """Returns the trtexec arguments that build the engine from the bundle's ONNX.

    fp16 lets TensorRT pick fp16 kernels; int8 builds from the ONNX's explicit Q/DQ and
    lets fp16 take the layers outside them; --sparsity=enable lets it try 2:4 sparse
    tactics (it keeps them only where faster). The timing cache makes rebuilds fast, the
    layer information shows which tactics were chosen.
    """
    args = ["trtexec", f"--onnx={spec.onnx}", f"--saveEngine={spec.engine}", f"--timingCacheFile={spec.timing_cache}"]
    if spec.precision in ("fp16", "int8"):
        args.append("--fp16")
    if spec.precision == "int8":
        args.append("--int8")
    if spec.sparsity == "2:4":
        args.append("--sparsity=enable")
    args += ["--profilingVerbosity=detailed", f"--exportLayerInfo={LAYER_INFO}"]
    return args


def build_script(spec: BundleSpec) -> str:
    """Returns build_engine.sh: the trtexec command, run from the bundle folder."""
    command = " ".join(shlex.quote(a) for a in trtexec_command(spec)[1:])
    sparse = ", 2:4 sparse tactics allowed" if spec.sparsity == "2:4" else ""
    return f"""#!/usr/bin/env bash
# Builds the TensorRT engine for the GPU this runs on ({spec.precision}{sparse}).
# An engine is specific to one GPU model and one TensorRT version: build it on the device.
# Written by edgeprune {spec.edgeprune_version} for profile {spec.profile}.
# The same build through the Python API, cached and verified: edgeprune trt-build <this folder>
set -euo pipefail
cd "$(dirname "$0")"
TRTEXEC="${{TRTEXEC:-trtexec}}"
if ! command -v "$TRTEXEC" >/dev/null 2>&1; then
  echo "trtexec not found: install TensorRT on this device (or set TRTEXEC=/path/to/trtexec)" >&2
  exit 2
fi
"$TRTEXEC" {command} "$@"
"""


def fix_batch(src: Path, dst: Path, batch: int) -> Path:
    """Returns ``dst``: the ONNX of ``src`` with its symbolic batch dimension fixed (static shapes).

    Everything else (nodes, initializers, Q/DQ scales) is the verified model's, byte for byte.
    """
    model = onnx.load(str(src))
    for value in [*model.graph.input, *model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].ClearField("dim_param")
            dims[0].dim_value = batch
    model.graph.ClearField("value_info")  # stale symbolic shapes; inferred again below
    model = onnx.shape_inference.infer_shapes(model)
    onnx.save(model, str(dst))
    onnx.checker.check_model(str(dst))
    return dst


def dynamic_dims(model: onnx.ModelProto) -> list[str]:
    """Returns the graph inputs and outputs that still have a symbolic or unknown dimension."""
    found = []
    for value in [*model.graph.input, *model.graph.output]:
        if any(not d.HasField("dim_value") for d in value.type.tensor_type.shape.dim):
            found.append(value.name)
    return found


def check_tensorrt_operators(model: onnx.ModelProto) -> None:
    """Raises UnsupportedError naming the operators TensorRT's ONNX parser cannot take."""
    bad = sorted({n.op_type for n in model.graph.node if n.op_type in TENSORRT_UNSUPPORTED}
                 | {f"{n.domain}::{n.op_type}" for n in model.graph.node if n.domain not in ("", "ai.onnx")})
    if bad:
        raise UnsupportedError(
            f"TensorRT cannot lower operator {', '.join(bad)} (not in TensorRT's ONNX operator support matrix); "
            "replace it in the model or provide a TensorRT plugin"
        )


def tensor_specs(model: onnx.ModelProto, which: str) -> list[dict]:
    """Returns name, shape and element type of the graph's inputs or outputs."""
    values = model.graph.input if which == "inputs" else model.graph.output
    return [{
        "name": v.name,
        "shape": [d.dim_value if d.HasField("dim_value") else d.dim_param for d in v.type.tensor_type.shape.dim],
        "dtype": onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name,
    } for v in values]


def sha256(path: Path) -> str:
    """Returns the hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_reference(path: Path, model: torch.nn.Module, batches: Sequence[tuple[torch.Tensor, ...]],
                    batch: int, names: list[str], samples: int = 8) -> Path:
    """Returns ``path`` after saving up to ``samples`` static-batch inputs and PyTorch's outputs."""
    rows = [tuple(t[i : i + batch] for t in b) for b in batches for i in range(0, b[0].shape[0] - batch + 1, batch)]
    rows = rows[: max(1, samples // batch)]
    arrays: dict[str, np.ndarray] = {}
    with torch.no_grad():
        outs = []
        for row in rows:
            out = model(*row)
            out = out[0] if isinstance(out, (tuple, list)) else out
            outs.append(getattr(out, "logits", out).float().numpy())
    for i, name in enumerate(names):
        arrays[f"input:{name}"] = np.stack([row[i].float().numpy() for row in rows])
    arrays["output"] = np.stack(outs)
    np.savez_compressed(path, **arrays)
    return path


def write_manifest(folder: Path, spec: BundleSpec) -> tuple[Path, Path]:
    """Returns (bundle.json, build_engine.sh) written into the bundle folder."""
    manifest = folder / MANIFEST
    manifest.write_text(json.dumps(spec.to_dict(), indent=2) + "\n")
    script = folder / SCRIPT
    script.write_text(build_script(spec))
    script.chmod(0o755)
    return manifest, script


def read_bundle(folder: str | Path) -> tuple[Path, BundleSpec]:
    """Returns (folder, spec) of a bundle; InputError if it is not one or its ONNX changed."""
    folder = Path(folder)
    if folder.is_dir() and not (folder / MANIFEST).exists() and (folder / BUNDLE_DIR / MANIFEST).exists():
        folder = folder / BUNDLE_DIR  # a build folder: its bundle is inside
    try:
        data = json.loads((folder / MANIFEST).read_text())
        spec = BundleSpec(**data)
    except FileNotFoundError:
        raise InputError(f"{folder} is not a TensorRT bundle (no {MANIFEST}); build one with --format tensorrt") from None
    except (json.JSONDecodeError, TypeError) as exc:
        raise InputError(f"{folder / MANIFEST} is not a valid bundle manifest: {exc}") from None
    onnx_path = folder / spec.onnx
    if not onnx_path.exists():
        raise InputError(f"bundle {folder} has no {spec.onnx}")
    if sha256(onnx_path) != spec.onnx_sha256:
        raise InputError(f"{onnx_path} does not match the hash in {MANIFEST}: the bundle was modified")
    return folder, spec
