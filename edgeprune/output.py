"""Build folders: claimed by one build at a time, staged beside the folder and swapped in whole when done.

A build checks that its folder can be written before any work, holds a lock on it for the
whole build (a second build into the same folder is refused), writes into a staging folder
beside it, and swaps the staging folder in at the end: atomically where the system can
exchange two folders (Linux), else by two renames. A failure or an interrupt leaves the
previous build as it was, and staging folders that a killed build left behind are removed
by the next build into that folder.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from edgeprune.errors import InputError

MARKER = "report.json"
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def check_output_folder(final: Path) -> None:
    """Raises InputError if ``final`` is not a folder edgeprune may write or replace."""
    final = Path(final)
    check_name_lengths(final)
    if final.exists() and not final.is_dir():
        raise InputError(f"output {final} exists and is not a folder")
    if final.is_dir() and any(final.iterdir()) and not (final / MARKER).exists():
        raise InputError(f"output folder {final} is not empty and holds no edgeprune build; choose another -o")
    check_writable(final)


# what the staging, old and lock names add to the output's own name (".NAME.staging-PID-...")
_SIBLING_CHARS = 32


def check_name_lengths(target: Path) -> None:
    """Raises InputError when a part of ``target`` (or the siblings a build writes beside it) is longer
    than the file system allows; a path that long is refused before any work, not half-way."""
    target = Path(target)
    parts = target.parts
    try:
        limit = os.pathconf(next((p for p in [target.parent, *target.parent.parents] if p.is_dir()), Path(".")),
                            "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    for i, part in enumerate(parts):
        extra = _SIBLING_CHARS if i == len(parts) - 1 else 0
        if len(os.fsencode(part)) + extra > limit:
            raise InputError(f"cannot write the output {str(target)[:60]}...: the name {part[:24]}... is "
                             f"{len(os.fsencode(part))} bytes long; this file system allows {limit - extra} here")


def check_writable(target: Path) -> None:
    """Raises InputError, before any work, when ``target`` could not be created or replaced."""
    target = Path(target)
    check_name_lengths(target)
    existing = next(p for p in [target.parent, *target.parent.parents] if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"cannot write the output {target}: {existing} is not a writable folder")
    if target.exists() and not os.access(target, os.W_OK):
        raise InputError(f"cannot write the output {target}: it is not writable")


@contextlib.contextmanager
def claimed_output(final: str | Path) -> Iterator[Path]:
    """Holds the lock of the output folder while the block runs; InputError when another build holds it.

    Leftovers of builds that were killed (their staging and old folders) are removed here.
    """
    final = Path(final)
    check_output_folder(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    lock = final.parent / f".{final.name}.lock"
    fd = _lock(lock, final)
    try:
        _remove_leftovers(final)
        yield final
    finally:
        with contextlib.suppress(OSError):
            lock.unlink()
        os.close(fd)


def _lock(lock: Path, final: Path) -> int:
    for _ in range(3):
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise InputError(f"another build (process {holder}) is writing to {final}; wait for it to finish "
                             "or choose another -o") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:  # not a lock file the previous holder had already removed
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
            return fd
        os.close(fd)
    raise InputError(f"could not lock the output {final}: other builds keep replacing its lock file")


def _remove_leftovers(final: Path) -> None:
    """Removes staging and old folders of this output that belong to processes no longer alive."""
    for kind in ("staging", "old"):
        for leftover in final.parent.glob(f".{final.name}.{kind}-*"):
            pid = leftover.name.rsplit("-", 1)[-1]
            if pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(leftover, ignore_errors=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # a leftover of this process is from an earlier, finished attempt
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
    if final.exists() and _exchange(stage, final):
        shutil.rmtree(stage, ignore_errors=True)  # it now holds the previous build
        return
    old = final.parent / f".{final.name}.old-{os.getpid()}"
    if final.exists():
        final.rename(old)
    stage.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swaps two folders in one step (Linux renameat2 RENAME_EXCHANGE); False where the system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    if ctypes.get_errno() in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EXDEV):
        return False
    raise OSError(ctypes.get_errno(), f"cannot swap {a} into {b}")
