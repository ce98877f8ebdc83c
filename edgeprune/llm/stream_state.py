"""What a streamed prune keeps on disk to resume: how far it got and the calibration states at that point.

After every finished block the run writes, each to a temporary name then renamed: the block's
shard, the hidden states the next block will read, and ``progress.json`` naming the block
last finished (and, for width pruning, the hidden channels the first pass chose). A run
killed at any moment restarts from the last block whose three files are whole; a run of
other settings or on other calibration tokens never reuses them (the signature differs).

The hidden states stay in memory while they fit their share of the memory budget, and live
in a memory-mapped file beside the shards when they do not; the report says which.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

WORK = ".partial"


def signature(*parts: object) -> str:
    """Returns a digest of what decides a streamed prune's result (settings, source, calibration tokens)."""
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, torch.Tensor):
            digest.update(part.detach().cpu().numpy().tobytes())
        else:
            digest.update(json.dumps(part, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:32]


@dataclass
class Progress:
    """How far a streamed prune got: the phase (``hidden`` scoring, then ``blocks``) and the last block done."""

    signature: str
    phase: str = "blocks"
    done: int = -1
    kept: list[int] | None = None  # the hidden channels the first pass kept (width pruning)
    hidden_sum_sq: list[float] | None = None  # the first pass's running channel statistics
    hidden_tokens: int = 0


class RunFolder:
    """The work folder of one streamed prune: progress, saved states, the shards written so far."""

    def __init__(self, target: Path, run: str) -> None:
        self.path = target / WORK
        self.path.mkdir(parents=True, exist_ok=True)
        self.run = run

    def progress(self) -> Progress:
        """Returns the saved progress of this very run, or a fresh one (other runs' files are ignored)."""
        file = self.path / "progress.json"
        if file.is_file():
            try:
                saved = json.loads(file.read_text())
                if saved.get("signature") == self.run:
                    return Progress(**saved)
            except (json.JSONDecodeError, TypeError):
                pass
        return Progress(self.run)

    def save(self, progress: Progress, states: list[torch.Tensor] | None) -> None:
        """Saves the states (if given) and then the progress that names them, each renamed into place."""
        if states is not None:
            _atomic_tensors(self.path / f"states-{progress.phase}.safetensors", states)
        partial = self.path / ".progress.json.partial"
        partial.write_text(json.dumps(progress.__dict__))
        os.replace(partial, self.path / "progress.json")

    def states(self, phase: str) -> list[torch.Tensor] | None:
        """Returns the hidden states saved after the last finished block of a phase, or None."""
        from safetensors.torch import load_file

        file = self.path / f"states-{phase}.safetensors"
        if not file.is_file():
            return None
        saved = load_file(str(file))
        return [saved[f"batch_{i}"] for i in range(len(saved))]


def _atomic_tensors(path: Path, tensors: list[torch.Tensor]) -> None:
    from safetensors.torch import save_file

    partial = path.with_name(f".{path.name}.partial")
    save_file({f"batch_{i}": t.contiguous() for i, t in enumerate(tensors)}, str(partial))
    os.replace(partial, path)


def spill(states: list[torch.Tensor], folder: Path, budget_bytes: int) -> tuple[list[torch.Tensor], str]:
    """Returns the states and where they live: in memory while they fit ``budget_bytes``, else each in a
    memory-mapped file of ``folder`` (what the next block writes goes back into the same file)."""
    size = sum(t.numel() * t.element_size() for t in states)
    if size <= budget_bytes:
        return states, f"in memory ({size / 1e6:.1f} MB)"
    mapped = []
    for i, t in enumerate(states):
        array = np.lib.format.open_memmap(folder / f"spill-{i}.npy", mode="w+", dtype=np.float32, shape=tuple(t.shape))
        array[...] = t.detach().float().numpy()
        mapped.append(torch.from_numpy(array))
    return mapped, f"memory-mapped in {folder} ({size / 1e6:.1f} MB over the {budget_bytes / 1e6:.1f} MB share)"
