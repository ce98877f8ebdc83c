"""The precisions edgeprune speaks of, once: what --quantize offers and what each costs per weight.

``fp32``/``fp16`` compute and store in that type; ``int8`` computes in int8 where the runtime
has integer kernels (a CNN's QDQ graph, a decoder's MatMulNBits with int8 activations) and
stores int8; ``int4`` is weight-only: 4-bit weights in blocks, each block with its scale,
decompressed (or read into int8 arithmetic) at run time. Profiles list which a device runs.
"""

from __future__ import annotations

from typing import Literal, get_args

Precision = Literal["fp32", "fp16", "int8", "int4"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
# --quantize: none keeps the format's own precision
QUANTIZE = ("none", "fp16", "int8", "int4")
# bits a stored weight takes (block scales of int4/int8 weights come on top; see weight_bytes)
WEIGHT_BITS = {"fp32": 32, "fp16": 16, "int8": 8, "int4": 4}
# weight-only precisions: the weights shrink, the arithmetic stays in a wider type
WEIGHT_ONLY = ("int4",)


def bytes_per_weight(precision: str) -> float:
    """Returns the bytes one weight takes at a precision (fp32 for an unknown one)."""
    return WEIGHT_BITS.get(precision, 32) / 8


def weight_bytes(count: int, precision: str, block_size: int | None = None, scale_bytes: int = 4) -> float:
    """Returns the bytes of ``count`` weights at a precision, with one scale per block when blocked."""
    payload = count * bytes_per_weight(precision)
    return payload + (count / block_size * scale_bytes if block_size else 0.0)
