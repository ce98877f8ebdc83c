"""Verification: does the artifact compute what the PyTorch model computes, on real inputs?"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch

Inputs = tuple[torch.Tensor, ...]

# How far an artifact may drift from PyTorch before it is not the same function. Relative
# to the output scale; top-1 agreement is what decides for classifiers. fp16 rounds every
# weight and activation to 11 significant bits; int8 adds per-tensor activation rounding on
# top of per-channel weight rounding. Palettized weights (Core ML lookup tables, checked
# numerically only on macOS) move further the fewer bits they keep.
TOLERANCE = {
    "fp32": (1e-3, 0.99),
    "fp16": (2e-2, 0.98),
    "int8": (2.5e-1, 0.90),
    # int4 weights in blocks (an LLM decoder's): judged by perplexity through the artifact as well
    "int4": (4e-1, 0.75),
    "lut8": (5e-2, 0.97),
    "lut6": (1.5e-1, 0.93),
    "lut4": (3e-1, 0.85),
}


@dataclass(frozen=True)
class Verification:
    """Result of comparing an artifact with PyTorch (numeric where the artifact runs here)."""

    method: str  # "numeric" or "structural"
    passed: bool
    max_abs_diff: float | None = None
    rel_diff: float | None = None
    agreement: float | None = None
    samples: int = 0
    detail: str = ""
    subject: str = "artifact"
    generation: dict | None = None  # a decoder's cached steps and greedy tokens against PyTorch's full forward

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None and v != ""}


@torch.no_grad()
def verify_numeric(
    reference: torch.nn.Module,
    predict: Callable[..., torch.Tensor],
    batches: Sequence[Inputs],
    precision: str,
    classifier: bool = True,
    subject: str = "artifact",
) -> Verification:
    """Returns how closely ``predict`` matches ``reference`` on the batches.

    ``precision`` picks the tolerance (a key of TOLERANCE); ``subject`` says what ``predict``
    runs when it is not the artifact itself.
    """
    reference.eval()
    max_diff, scale, agree, total = 0.0, 0.0, 0, 0
    for batch in batches:
        want = reference(*batch)
        want = want[0] if isinstance(want, (tuple, list)) else want
        want = getattr(want, "logits", want).float()
        got = predict(*batch).float().reshape(want.shape)
        max_diff = max(max_diff, float((want - got).abs().max()))
        scale = max(scale, float(want.abs().max()))
        if classifier and want.dim() >= 2:
            agree += int((want.argmax(-1) == got.argmax(-1)).sum())
            total += want.argmax(-1).numel()
    rel = max_diff / scale if scale > 0 else max_diff
    agreement = agree / total if total else None
    rel_tol, agree_tol = TOLERANCE.get(precision, TOLERANCE["fp32"])
    passed = rel <= rel_tol and (agreement is None or agreement >= agree_tol)
    detail = "" if passed else (
        f"{precision} artifact differs from PyTorch: relative diff {rel:.2e} (tolerance {rel_tol:.0e})"
        + (f", top-1 agreement {agreement:.3f} (needs {agree_tol})" if agreement is not None else "")
    )
    return Verification("numeric", passed, max_diff, rel, agreement, sum(b[0].shape[0] for b in batches), detail,
                        subject)


def structural(checks: Sequence[tuple[str, bool]], subject: str = "artifact") -> Verification:
    """Returns a structural verification: passed when every named check holds.

    For artifacts that cannot run on this machine: the detail lists what was checked, and
    the failed checks first, so a report says exactly what is and is not proven.
    """
    failed = [name for name, ok in checks if not ok]
    held = [name for name, ok in checks if ok]
    detail = "; ".join([*(f"FAILED: {n}" for n in failed), *held])
    return Verification("structural", not failed, detail=detail, subject=subject)
