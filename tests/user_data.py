"""Folders of real data as a user would hand them to `--data`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

TEXTS = Path(__file__).resolve().parent.parent / "examples" / "data" / "multilingual"


def digit_pngs(folder: Path, count: int, classes: bool = True) -> Path:
    """Writes scikit-learn's handwritten digits (real 8x8 scans) as grey PNGs, in subfolders
    named by their digit (an ImageFolder layout) or, with ``classes`` False, side by side."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    for i in range(count):
        sub = folder / str(digits.target[i]) if classes else folder
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray((digits.images[i] * 16).clip(0, 255).astype(np.uint8)).save(sub / f"{i:03d}.png")
    return folder
