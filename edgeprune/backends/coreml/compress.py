"""Core ML weight compression with coremltools.optimize.coreml: sparse, palettized, int8, joint."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgeprune.backends.coreml.convert import COMPRESSION, JOINT_COMPRESSION, quiet, target_level
from edgeprune.errors import UnsupportedError

PALETTE_BITS = (4, 6, 8)
# Sparse storage costs a 1-bit mask per weight plus the non-zero values: it beats dense fp16
# from about 6% zeros; below 10% the pruner left the layer dense on purpose, so keep it dense.
MIN_STORED_SPARSITY = 0.1
# coremltools' default: smaller tensors (biases, norms, the first conv) are not worth a table.
WEIGHT_THRESHOLD = 2048


@dataclass(frozen=True)
class Compression:
    """How the package stores its weights: sparse zeros, a lookup table of 2^bits, int8 values."""

    sparse: bool = False
    palettize: int | None = None
    int8: bool = False

    @property
    def joint(self) -> bool:
        return self.sparse and (self.palettize is not None or self.int8)

    def describe(self) -> str:
        """Returns the encoding in words ('sparse + 4-bit palettized', 'dense fp16')."""
        parts = []
        if self.sparse:
            parts.append("sparse")
        if self.palettize:
            parts.append(f"{self.palettize}-bit palettized")
        if self.int8:
            parts.append("int8 linear")
        return " + ".join(parts) or "dense"


def compression_for(precision: str, sparsity: str, palettize: int | None) -> Compression:
    """Returns the compression a request asks for (zeros of unstructured and N:M plans stored sparse)."""
    return Compression(sparse=sparsity in ("unstructured", "nm"), palettize=palettize, int8=precision == "int8")


def check_compression(compression: Compression, target: str) -> None:
    """Raises UnsupportedError when the deployment target cannot hold the compression."""
    if compression.palettize is not None and compression.palettize not in PALETTE_BITS:
        raise UnsupportedError(f"--palettize takes {', '.join(map(str, PALETTE_BITS))} bits, got {compression.palettize}")
    if compression.palettize is not None and compression.int8:
        raise UnsupportedError("choose one weight encoding: --palettize BITS or --quantize int8, not both")
    level = target_level(target)
    if compression.describe() != "dense" and level < COMPRESSION:
        raise UnsupportedError(
            f"{compression.describe()} weights need Core ML for iOS16/macOS13 or later; the profile targets {target}"
        )
    if compression.joint and level < JOINT_COMPRESSION:
        raise UnsupportedError(
            f"{compression.describe()} weights (joint compression) need iOS18/macOS15 or later; the profile "
            f"targets {target}: store the zeros sparse alone, or the weights {'palettized' if compression.palettize else 'int8'} alone"
        )


def compress(mlmodel: Any, compression: Compression) -> Any:
    """Returns the model with its weights stored as asked (the input model is not changed)."""
    import coremltools.optimize.coreml as cto

    with quiet():
        if compression.sparse:
            # The model arrives pruned: store its exact zeros as a bit mask plus the non-zeros.
            config = cto.OptimizationConfig(global_config=cto.OpThresholdPrunerConfig(
                threshold=1e-12, minimum_sparsity_percentile=MIN_STORED_SPARSITY, weight_threshold=WEIGHT_THRESHOLD))
            mlmodel = cto.prune_weights(mlmodel, config)
        if compression.palettize is not None:
            config = cto.OptimizationConfig(global_config=cto.OpPalettizerConfig(
                mode="kmeans", nbits=compression.palettize, weight_threshold=WEIGHT_THRESHOLD))
            mlmodel = cto.palettize_weights(mlmodel, config, joint_compression=compression.sparse)
        if compression.int8:
            config = cto.OptimizationConfig(global_config=cto.OpLinearQuantizerConfig(
                mode="linear_symmetric", dtype="int8", granularity="per_channel", weight_threshold=WEIGHT_THRESHOLD))
            mlmodel = cto.linear_quantize_weights(mlmodel, config, joint_compression=compression.sparse)
    return mlmodel
