"""The Core ML backend: an .mlpackage (mlprogram) for Apple devices, compressed with coremltools.

Converts, compresses and inspects on any OS; runs (and is verified numerically) only on
macOS. Elsewhere the package is verified structurally: the spec loads, targets the
profile's OS, computes in the asked precision, and stores the weights as asked (sparse with
the model's own zeros, palettized or int8 at the asked bit width).
"""

from __future__ import annotations

import platform
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from edgeprune.backends.base import (
    Artifact,
    Inputs,
    LowerRequest,
    check_precision,
    register_backend,
)
from edgeprune.backends.coreml.compress import (
    MIN_STORED_SPARSITY,
    WEIGHT_THRESHOLD,
    Compression,
    check_compression,
    compress,
    compression_for,
)
from edgeprune.backends.coreml.convert import (
    MLPROGRAM,
    capture,
    check_operators,
    convert,
    coreml_target,
    import_coremltools,
    quiet,
    target_level,
)
from edgeprune.backends.coreml.program import ProgramSummary, read_program
from edgeprune.errors import UnsupportedError
from edgeprune.uploads import UploadModel
from edgeprune.verify import Verification, structural

PACKAGE = "model.mlpackage"


@register_backend("coreml")
class CoreMLBackend:
    """Lowers to ``model.mlpackage`` for the profile's minimum deployment target."""

    name = "coreml"
    # fp16 is Core ML's default compute precision; int8 means int8 weights (computed in fp16).
    precisions = frozenset({"fp32", "fp16", "int8"})
    sparsity_storage = frozenset({"structured", "unstructured", "nm", "palettized"})
    computes_int8 = False  # int8 means int8 weights, computed in fp16

    def check(self, request: LowerRequest) -> None:
        check_precision(self, request)
        target = request.profile.min_deployment_target
        if not target:
            raise UnsupportedError(f"profile {request.profile.name} sets no min_deployment_target for Core ML")
        if target_level(target) < MLPROGRAM:
            raise UnsupportedError(f"Core ML mlprogram packages need iOS15/macOS12 or later; the profile targets {target}")
        check_compression(self._compression(request), target)
        coreml_target(target)  # also raises, naming the extra, when coremltools is missing

    def preflight(self, model: torch.nn.Module, example_inputs: Inputs, request: LowerRequest) -> None:
        """Checks every operator against coremltools' converters (the build calls this before pruning)."""
        _, ops, _ = capture(model, example_inputs)
        check_operators(ops)

    def lower(self, model: torch.nn.Module, example_inputs: Inputs, request: LowerRequest, out_dir: Path) -> Artifact:
        target = request.profile.min_deployment_target or ""
        compression = self._compression(request)
        mlmodel, method = convert(model, example_inputs, target, request.precision)
        if compression.describe() != "dense":
            mlmodel = compress(mlmodel, compression)
        path = out_dir / PACKAGE
        with quiet():
            mlmodel.save(str(path))
        summary = read_program(path)
        notes = [] if platform.system() == "Darwin" else [
            "Core ML runs only on Apple hardware: the package was checked structurally here "
            "(spec, deployment target, weight storage); run the build on a Mac to check its outputs"]
        details = {"deployment_target": target, "captured_with": method, "weights": compression.describe(),
                   "program": summary.to_dict()}
        tolerance = f"lut{compression.palettize}" if compression.palettize else None
        return Artifact(format=self.name, precision=request.precision, path=path, files=[path], notes=notes,
                        details=details, tolerance=tolerance)

    def predictor(self, artifact: Artifact) -> Callable[..., torch.Tensor] | None:
        if self.cannot_run_reason() is not None:
            return None
        ct = import_coremltools()
        model = ct.models.MLModel(str(artifact.path))
        spec = model.get_spec()
        names = [i.name for i in spec.description.input]
        output = spec.description.output[0].name
        batch = int(spec.description.input[0].type.multiArrayType.shape[0])

        def predict(*inputs: torch.Tensor) -> torch.Tensor:
            # The package has the example's static shape: run the rows in blocks of that batch.
            rows = []
            for start in range(0, inputs[0].shape[0], batch):
                feed = {n: t[start : start + batch].numpy().astype(np.float32) for n, t in zip(names, inputs, strict=True)}
                rows.append(torch.from_numpy(np.asarray(model.predict(feed)[output], dtype=np.float32)))
            return torch.cat(rows)

        return predict

    def upload(self, artifact: Artifact) -> UploadModel:
        return UploadModel("artifact", "mlpackage", Path(artifact.path), None, artifact.precision)

    def cannot_run_reason(self) -> str | None:
        if platform.system() == "Darwin":
            return None
        return f"Core ML runs only on Apple hardware (this machine: {platform.system()} {platform.machine()})"

    def verify_structure(self, artifact: Artifact, model: torch.nn.Module, request: LowerRequest) -> Verification:
        """Returns the structural check: spec, target, compute precision and weight storage."""
        try:
            summary = read_program(artifact.path)
        except Exception as exc:  # a package that does not load is the failure this check exists for
            return structural([(f"the spec loads ({type(exc).__name__}: {exc})", False)])
        target = request.profile.min_deployment_target or ""
        checks = [
            ("the spec loads as an mlprogram", True),
            (f"specification version {summary.specification_version} covers {target}",
             summary.specification_version >= int(coreml_target(target))),
        ]
        want = "FLOAT32" if request.precision == "fp32" else "FLOAT16"
        dtypes = summary.compute_dtypes
        checks.append((f"every conv/linear/matmul computes in {want.lower()} ({_fmt(dtypes)})",
                       bool(dtypes) and set(dtypes) == {want}))
        checks += storage_checks(summary, model, self._compression(request))
        return structural(checks)

    @staticmethod
    def _compression(request: LowerRequest) -> Compression:
        return compression_for(request.precision, request.sparsity, request.palettize)


def storage_checks(summary: ProgramSummary, model: torch.nn.Module, compression: Compression) -> list[tuple[str, bool]]:
    """Returns checks that the package stores the model's weights as the compression asks.

    Sparse: every Conv/Linear weight the model has pruned (at least MIN_STORED_SPARSITY zeros,
    more than WEIGHT_THRESHOLD elements) is stored sparse with as many non-zeros as the
    model has after fp16 rounding. Palettized / int8: every such weight is stored at the
    asked bit width.
    """
    expected = _model_weights(model)
    checks: list[tuple[str, bool]] = []
    compressed = [w for w in summary.weights if w.encoding != "dense"]
    if compression.sparse:
        want = sorted((n, nnz) for n, nnz in expected if 1 - nnz / n >= MIN_STORED_SPARSITY)
        got = sorted((w.numel, w.nonzero) for w in compressed if "sparse" in w.encoding)
        same = len(want) == len(got) and all(
            a[0] == b[0] and abs(a[1] - b[1]) <= max(2, 1e-3 * a[0]) for a, b in zip(want, got, strict=True))
        sparsity = 1 - sum(nnz for _, nnz in got) / max(1, sum(n for n, _ in got))
        checks.append((f"{len(got)} weights stored sparse at {sparsity:.1%} zeros, matching the model's "
                       f"{len(want)} pruned weights non-zero for non-zero", same and bool(want)))
    bits = compression.palettize or (8 if compression.int8 else None)
    if bits is not None:
        kind = "palettized" if compression.palettize else "linear"
        encoded = [w for w in compressed if kind in w.encoding]
        wrong = [w for w in encoded if w.bits != bits]
        checks.append((f"{len(encoded)} weights stored {kind} at {bits} bits "
                       f"(model has {len(expected)} weights over {WEIGHT_THRESHOLD} elements)",
                       bool(encoded) and not wrong and len(encoded) >= len(expected)))
    if not compression.sparse and bits is None:
        dense16 = [w for w in summary.weights if w.encoding == "dense"]
        checks.append((f"{len(dense16)} weights stored dense", len(dense16) >= len(expected)))
    return checks


def _model_weights(model: torch.nn.Module) -> list[tuple[int, int]]:
    """Returns (elements, non-zeros after fp16 rounding) of each large Conv/Linear weight."""
    found = []
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if isinstance(module, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.Linear)) \
                and weight is not None and weight.numel() > WEIGHT_THRESHOLD:
            found.append((weight.numel(), int(torch.count_nonzero(weight.detach().half()))))
    return found


def _fmt(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {k.lower()}" for k, n in counts.items()) or "none found"

