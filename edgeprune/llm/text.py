"""English text every Python install has, and text files: the corpus of causal-LM workloads.

``pydoc_data.topics`` holds the Python language reference topics that ``help()`` shows (about
460 KB), shipped with the interpreter, so no download is needed. Many topics repeat passages
of others (``specialnames`` contains ``customization`` whole), so the held-out split is made of
self-contained topics, and any line they contain is struck from the training text: no passage
of the held-out text is seen in training.
"""

from __future__ import annotations

from collections import defaultdict
from functools import lru_cache
from pathlib import Path

from edgeprune.errors import InputError

SHARED_LINE_CHARS = 24  # shorter lines ("Example:", "See also") may repeat without sharing a passage


def pydoc_topics() -> dict[str, str]:
    """Returns the interpreter's help topics, name to text."""
    from pydoc_data.topics import topics

    return dict(topics)


def _self_contained(topics: dict[str, str]) -> list[str]:
    """Returns the topics, in name order, that share no line of substance with another topic."""
    owners: dict[str, set[str]] = defaultdict(set)
    for name, text in topics.items():
        for line in text.splitlines():
            if len(line.strip()) >= SHARED_LINE_CHARS:
                owners[line.strip()].add(name)
    return [
        name
        for name in sorted(topics)
        if all(len(owners[line.strip()]) == 1 for line in topics[name].splitlines() if len(line.strip()) >= SHARED_LINE_CHARS)
    ]


@lru_cache(maxsize=1)
def pydoc_corpus() -> tuple[str, str]:
    """Returns (training text, held-out text) from the interpreter's help topics.

    Held out: every second self-contained topic (about 35 KB on Python 3.11). Training: every
    other topic, less any line that also occurs in the held-out text.
    """
    topics = pydoc_topics()
    heldout_names = _self_contained(topics)[1::2]
    heldout = "\n\n".join(topics[name] for name in heldout_names)
    heldout_lines = {line.strip() for line in heldout.splitlines() if line.strip()}
    train = "\n\n".join(
        "\n".join(line for line in topics[name].splitlines() if line.strip() not in heldout_lines)
        for name in sorted(topics)
        if name not in heldout_names
    )
    return train, heldout


def read_text(path: str | Path) -> str:
    """Returns a UTF-8 text file's content (a folder: its .txt files joined, edgeprune.data), or raises InputError."""
    path = Path(path)
    if path.is_dir():
        from edgeprune.data import load_texts

        return "\n".join(load_texts(path))
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read text file {path}: {exc}") from exc
    if not text.strip():
        raise InputError(f"text file {path} is empty")
    return text


def split_text(text: str, heldout_fraction: float = 0.1) -> tuple[str, str]:
    """Returns (training text, held-out text): the last ``heldout_fraction``, cut at a line break."""
    cut = int(len(text) * (1 - heldout_fraction))
    newline = text.rfind("\n", 0, cut)
    if newline > len(text) // 2:
        cut = newline + 1
    return text[:cut], text[cut:]
