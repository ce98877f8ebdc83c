"""Atomic build folders: a build is staged beside its folder and swapped in only when done."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from edgeprune.errors import InputError

MARKER = "report.json"


def check_output_folder(final: Path) -> None:
    """Raises InputError if ``final`` exists and is not a folder edgeprune may replace."""
    if final.exists() and not final.is_dir():
        raise InputError(f"output {final} exists and is not a folder")
    if final.is_dir() and any(final.iterdir()) and not (final / MARKER).exists():
        raise InputError(f"output folder {final} is not empty and holds no edgeprune build; choose another -o")


@contextlib.contextmanager
def staged_output(final: str | Path) -> Iterator[Path]:
    """Yields an empty staging folder that replaces ``final`` only if the block succeeds.

    A failure or an interrupt removes the staging folder and leaves ``final`` as it was,
    so a broken build never destroys the previous good one.
    """
    final = Path(final)
    check_output_folder(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    stage = final.parent / f".{final.name}.staging-{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    old = final.parent / f".{final.name}.old-{os.getpid()}"
    if final.exists():
        final.rename(old)
    stage.rename(final)
    shutil.rmtree(old, ignore_errors=True)
