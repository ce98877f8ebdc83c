"""A Hugging Face checkpoint on disk, read one tensor at a time and written one block at a time.

Reading: a folder's ``model.safetensors`` (or its shards and index) is opened lazily, so a
block's tensors are read when asked for, in the checkpoint's own dtype. Writing: every
decoder block goes to a shard of its own the moment it is pruned, named for the final layout
(``model-00007-of-00033.safetensors``: the blocks, then one shard for the embeddings, the
last norm and the LM head) with the index ``from_pretrained`` reads. Shards are written to
a temporary name and renamed, so a shard on disk is always whole.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

import torch

from edgeprune.errors import InputError

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
# the files beside the weights that a reload needs, copied as they are
SIDE_FILES = ("generation_config.json", "tokenizer.json", "tokenizer_config.json", "tokenizer.model",
              "special_tokens_map.json", "vocab.json", "merges.txt")


class Checkpoint:
    """A safetensors checkpoint folder: its config and its tensors, each read when asked for."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        config = self.folder / "config.json"
        if not config.is_file():
            raise InputError(f"{self.folder} is not a Hugging Face model directory (no config.json)")
        self.config_dict = json.loads(config.read_text())
        if (self.folder / INDEX).is_file():
            weight_map = json.loads((self.folder / INDEX).read_text())["weight_map"]
            self.files = {name: self.folder / file for name, file in weight_map.items()}
        elif (self.folder / SINGLE).is_file():
            from safetensors import safe_open

            with safe_open(str(self.folder / SINGLE), framework="pt") as f:
                self.files = dict.fromkeys(f.keys(), self.folder / SINGLE)
        else:
            raise InputError(f"{self.folder} holds no safetensors weights ({SINGLE} or {INDEX})")

    @property
    def names(self) -> list[str]:
        return list(self.files)

    def tensors(self, names: list[str]) -> dict[str, torch.Tensor]:
        """Returns the named tensors in the checkpoint's dtype, each shard opened once."""
        from safetensors import safe_open

        by_file: dict[Path, list[str]] = {}
        for name in names:
            by_file.setdefault(self.files[name], []).append(name)
        out = {}
        for file, wanted in by_file.items():
            with safe_open(str(file), framework="pt") as f:
                for name in wanted:
                    out[name] = f.get_tensor(name)
        return out

    def block_names(self, prefix: str, index: int) -> list[str]:
        """Returns the names of block ``index``'s tensors (``prefix`` is the blocks' path, e.g. model.layers)."""
        start = f"{prefix}.{index}."
        return [n for n in self.files if n.startswith(start)]

    def other_names(self, prefix: str) -> list[str]:
        """Returns the names of every tensor that is not a block's: embeddings, the last norm, the LM head."""
        return [n for n in self.files if not n.startswith(f"{prefix}.")]

    def dtype(self) -> torch.dtype:
        """Returns the dtype the checkpoint stores its weights in (the first block tensor's)."""
        name = next(iter(self.files))
        return self.tensors([name])[name].dtype


def shard_name(index: int, count: int) -> str:
    """Returns the file name of shard ``index`` (0-based) of ``count``, as transformers names shards."""
    return f"model-{index + 1:05d}-of-{count:05d}.safetensors"


def write_shard(folder: Path, name: str, tensors: Mapping[str, torch.Tensor]) -> Path:
    """Returns the shard written whole: to a temporary name first, then renamed."""
    from safetensors.torch import save_file

    path = folder / name
    partial = folder / f".{name}.partial"
    save_file({k: v.detach().contiguous() for k, v in sorted(tensors.items())}, str(partial),
              metadata={"format": "pt"})
    os.replace(partial, path)
    return path


def write_index(folder: Path, shards: Mapping[str, list[str]]) -> Path:
    """Returns the index of the shards (shard file -> tensor names), with their total size."""
    weight_map = {name: file for file, names in shards.items() for name in names}
    total = sum((folder / file).stat().st_size for file in shards)
    path = folder / INDEX
    path.write_text(json.dumps({"metadata": {"total_size": total},
                                "weight_map": dict(sorted(weight_map.items()))}, indent=2) + "\n")
    return path


def copy_side_files(source: Path, target: Path) -> list[Path]:
    """Returns the tokenizer and generation files copied from one checkpoint folder to another."""
    copied = []
    for name in SIDE_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, target / name)
            copied.append(target / name)
    return copied
