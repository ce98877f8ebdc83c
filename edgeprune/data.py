"""A folder of the user's own data (``--data FOLDER``): images or text, for calibration and evaluation.

Images (``.png``, ``.jpg``, ``.jpeg``, ``.bmp``, ``.ppm``, ``.pgm``, ``.webp``; subfolders
too, so an ImageFolder layout works) are read in path order, converted to the model's
channels, resized to its input size, scaled to [0, 1] and normalized with the mean and
standard deviation its library states. Text (``.txt``, UTF-8) is read in path order. Where
every file lies in a subfolder, the subfolders' names are the inputs' labels (``labels``). A
folder with neither, a file that does not read, or too few inputs is bad input (exit 2).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from edgeprune.errors import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".webp")
TEXT_SUFFIXES = (".txt",)
# far above any camera's frame; a header claiming more is a damaged or hostile file, not a photo
MAX_PIXELS = 64_000_000
MIN_INPUTS = 8  # half calibrate, half are held out: fewer leaves too little of either


def data_folder(path: str | Path) -> Path:
    """Returns the folder, or raises InputError when it is not one."""
    folder = Path(path)
    if not folder.is_dir():
        raise InputError(f"--data {path}: not a folder")
    return folder


def files(folder: Path, suffixes: Sequence[str]) -> list[Path]:
    """Returns the folder's files (subfolders too) with one of the suffixes, in path order."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)


def labels(path: str | Path, suffixes: Sequence[str]) -> list[str] | None:
    """Returns the name of the top subfolder each file (in path order) lies in, or None where
    some lie in the folder itself: an ImageFolder layout names its classes so."""
    folder = data_folder(path)
    names = [p.relative_to(folder).parts for p in files(folder, suffixes)]
    return [parts[0] for parts in names] if names and all(len(parts) > 1 for parts in names) else None


def load_images(path: str | Path, shape: Sequence[int], mean: Sequence[float] | None = None,
                std: Sequence[float] | None = None) -> torch.Tensor:
    """Returns the folder's images as a (N, C, H, W) float tensor for a model whose input is ``shape`` (C, H, W)."""
    from PIL import Image, UnidentifiedImageError

    folder = data_folder(path)
    found = files(folder, IMAGE_SUFFIXES)
    if len(found) < MIN_INPUTS:
        raise InputError(f"--data {path}: {len(found)} image(s) ({', '.join(IMAGE_SUFFIXES)}); "
                         f"at least {MIN_INPUTS} are needed, half to calibrate and half held out")
    channels, height, width = (int(v) for v in shape)
    if channels not in (1, 3):
        raise InputError(f"--data {path}: the model takes {channels}-channel images; only 1 (grey) or 3 (RGB) read")
    images = []
    for file in found:
        try:
            with Image.open(file) as image:  # reads the header only: the size is known before any pixel is
                if image.width * image.height > MAX_PIXELS:
                    raise InputError(f"--data {path}: {file} claims {image.width}x{image.height} pixels; images over "
                                     f"{MAX_PIXELS // 10**6} megapixels are refused (resize it first)")
                pixels = image.convert("RGB" if channels == 3 else "L").resize((width, height), Image.BILINEAR)
                array = np.asarray(pixels, dtype=np.float32) / 255.0
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as exc:
            raise InputError(f"--data {path}: cannot read image {file}: {exc}") from None
        images.append(array.reshape(height, width, channels).transpose(2, 0, 1))
    batch = torch.from_numpy(np.stack(images))
    if mean is not None and std is not None:
        batch = (batch - torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)) \
            / torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return batch


def load_texts(path: str | Path) -> list[str]:
    """Returns the folder's texts (``.txt``, UTF-8), in path order; an empty file is an empty text,
    and a folder of nothing but empty files is bad input."""
    folder = data_folder(path)
    found = files(folder, TEXT_SUFFIXES)
    if not found:
        raise InputError(f"--data {path}: no text files (.txt)")
    texts = []
    for file in found:
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"--data {path}: cannot read text file {file}: {exc}") from None
        texts.append(text)
    if not any(t.strip() for t in texts):
        raise InputError(f"--data {path}: every text file is empty")
    return texts


def label_targets(names: Sequence[str] | None, label_names: dict[int, str], classes: int
                  ) -> tuple[torch.Tensor | None, str]:
    """Returns (each input's class index, how they were read) from the subfolders' names.

    A name is a class index below ``classes`` or, case aside, one of the model's
    ``label_names``; (None, why) when the inputs lie in no subfolders or a name is neither.
    """
    if names is None:
        return None, "no class subfolders"
    by_name = {str(v).lower(): int(k) for k, v in label_names.items()}
    targets = []
    for name in names:
        if name.isascii() and name.isdigit() and int(name) < classes:  # not '²' or '٣'
            targets.append(int(name))
        elif name.lower() in by_name:
            targets.append(by_name[name.lower()])
        else:
            return None, f"subfolder {name!r} is neither a class index below {classes} nor one of the model's labels"
    return torch.tensor(targets, dtype=torch.long), "labelled by their subfolders"
