"""Writing a benchmark's results into its own section of docs/benchmarks.md."""

from __future__ import annotations

import platform
import re
import subprocess
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def machine() -> str:
    """Returns the CPU model name and core count as lscpu reports them."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or platform.machine()
    name = re.search(r"^Model name:\s*(.+)$", text, re.M)
    cpus = re.search(r"^CPU\(s\):\s*(\d+)$", text, re.M)
    return f"{name.group(1).strip() if name else platform.machine()}, {cpus.group(1) if cpus else '?'} cores"


def write_section(heading: str, text: str, doc: Path = DOC) -> None:
    """Replaces (or appends) the section under ``heading``, leaving every other section as it is."""
    doc.parent.mkdir(parents=True, exist_ok=True)
    current = doc.read_text() if doc.exists() else "# Benchmarks\n\n"
    pattern = re.compile(rf"^{re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)
    body = text.rstrip() + "\n\n"
    updated = pattern.sub(lambda _: body, current) if pattern.search(current) else current.rstrip() + "\n\n" + body
    doc.write_text(updated.rstrip() + "\n")
