"""The candidate cache: a candidate's measurements on disk, keyed by everything that decides them."""

from __future__ import annotations

import hashlib
import json
import os
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


class Cache:
    """JSON entries under ``cache_dir()``, one per key; written atomically, unreadable entries ignored."""

    def __init__(self, base: object, enabled: bool = True) -> None:
        self.base = json.dumps(base)
        self.enabled = enabled

    def path(self, *key: object) -> Path:
        digest = hashlib.sha256(json.dumps([self.base, *key]).encode()).hexdigest()[:32]
        return cache_dir() / f"{digest}.json"

    def load(self, *key: object) -> dict | None:
        path = self.path(*key)
        if not self.enabled or not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def store(self, data: dict, *key: object) -> None:
        if not self.enabled:
            return
        path = self.path(*key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(path)
