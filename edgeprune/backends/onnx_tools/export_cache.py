"""A per-process cache of ONNX exports, keyed by what determines the exported graph.

The torch.export-based exporter takes seconds per model, and one build exports the same
model more than once (the artifact, the dense latency baseline; a TensorRT bundle and its
int8 twin). The key covers the model's class, structure, plain attributes, every parameter
and buffer value, the input shapes and dtypes and the export settings, so a pruned or
otherwise changed model never hits an older entry.
"""

from __future__ import annotations

import atexit
import hashlib
import shutil
import tempfile
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import torch

_PLAIN = (bool, int, float, str, type(None))
MAX_ENTRIES = 8


def fingerprint(model: torch.nn.Module, inputs: Sequence[torch.Tensor], settings: str) -> str:
    """Returns a hex digest of everything that decides the exported graph."""
    digest = hashlib.sha256()
    digest.update(f"{type(model).__module__}.{type(model).__qualname__}|{settings}|{model!r}".encode())
    for name, module in model.named_modules():
        attrs = sorted((k, v) for k, v in vars(module).items()
                       if not k.startswith("_") and (isinstance(v, _PLAIN) or
                                                     (isinstance(v, tuple) and all(isinstance(x, _PLAIN) for x in v))))
        digest.update(f"{name}|{type(module).__qualname__}|{attrs}".encode())
    for name, tensor in [*model.state_dict(keep_vars=False).items()]:
        data = tensor.detach().cpu().contiguous().reshape(-1)  # 0-d tensors cannot be viewed as bytes
        digest.update(f"{name}|{data.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    for t in inputs:
        digest.update(f"input|{t.dtype}|{tuple(t.shape)}".encode())
    return digest.hexdigest()


class ExportCache:
    """The last MAX_ENTRIES exports of this process, as files in a private temporary folder."""

    def __init__(self) -> None:
        self._folder: Path | None = None
        self._entries: OrderedDict[str, Path] = OrderedDict()

    def get(self, key: str, destination: Path) -> Path | None:
        """Returns ``destination`` holding a copy of the cached export, or None on a miss."""
        cached = self._entries.get(key)
        if cached is None or not cached.exists():
            return None
        self._entries.move_to_end(key)
        shutil.copyfile(cached, destination)
        return destination

    def put(self, key: str, exported: Path) -> None:
        """Keeps a copy of a fresh export under its key (dropping the oldest beyond MAX_ENTRIES)."""
        if self._folder is None:
            self._folder = Path(tempfile.mkdtemp(prefix="edgeprune-exports-"))
            atexit.register(shutil.rmtree, self._folder, True)
        target = self._folder / f"{key}.onnx"
        shutil.copyfile(exported, target)
        self._entries[key] = target
        while len(self._entries) > MAX_ENTRIES:
            _, old = self._entries.popitem(last=False)
            old.unlink(missing_ok=True)


EXPORTS = ExportCache()
