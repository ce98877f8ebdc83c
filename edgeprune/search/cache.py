"""The candidate cache: a candidate's measurements on disk, keyed by everything that decides them."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import torch

CACHE_ENV = "EDGEPRUNE_CACHE_DIR"


def cache_dir() -> Path:
    """Returns the folder candidate results are cached in (EDGEPRUNE_CACHE_DIR or ~/.cache)."""
    root = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "edgeprune"
    return Path(root) / "candidates"


def model_fingerprint(model: torch.nn.Module) -> str:
    """Returns a hash of the model's class and weights (what makes a cached result valid)."""
    h = hashlib.sha256(type(model).__qualname__.encode())
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:24]


def inputs_fingerprint(batches) -> str:
    """Returns a hash of calibration batches (tuples of tensors): what the candidates were
    calibrated on, and, for a model argument with ``--data``, the folder they came from."""
    h = hashlib.sha256()
    for batch in batches:
        for tensor in batch:
            if isinstance(tensor, torch.Tensor):
                h.update(str((tensor.dtype, tuple(tensor.shape))).encode())
                h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:24]


def warn(message: str) -> None:
    """Prints one warning line: the cache only saves time, so its trouble never stops a build."""
    sys.stderr.write(f"warning: {message}\n")


class Cache:
    """JSON entries under ``cache_dir()``, one per key; written atomically.

    A damaged entry (not JSON, not an object, a folder in its place) is discarded with a
    one-line warning and rebuilt; a cache folder that cannot be written is skipped the same way.
    """

    def __init__(self, base: object, enabled: bool = True) -> None:
        self.base = json.dumps(base)
        self.enabled = enabled

    def path(self, *key: object) -> Path:
        digest = hashlib.sha256(json.dumps([self.base, *key]).encode()).hexdigest()[:32]
        return cache_dir() / f"{digest}.json"

    def load(self, *key: object) -> dict | None:
        path = self.path(*key)
        if not self.enabled or not path.exists():
            return None
        try:
            data = json.loads(path.read_text())
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as exc:
            self.discard(path, f"{type(exc).__name__}: {exc}"[:120])
            return None
        return data

    def discard(self, path: Path, why: str) -> None:
        """Removes a damaged entry, saying so in one line."""
        warn(f"discarded a damaged cache entry {path} ({why}); it is rebuilt")
        try:
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        except OSError:
            pass

    def store(self, data: dict, *key: object) -> None:
        if not self.enabled:
            return
        path = self.path(*key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.is_dir():
                self.discard(path, "a folder in place of an entry")
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(data, allow_nan=False))
            tmp.replace(path)
        except (OSError, ValueError) as exc:
            warn(f"cannot write the candidate cache under {path.parent} ({type(exc).__name__}: {exc}); "
                 f"going on without it")
