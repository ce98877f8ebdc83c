"""Writing a benchmark's results into its own section of docs/benchmarks.md."""

from __future__ import annotations

import os
import platform
import re
import subprocess
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def machine() -> str:
    """Returns the CPU model, core count, vector ISA and hypervisor as lscpu reports them."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    info = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    model = info.get("Model name", platform.machine()).strip()
    cores = info.get("CPU(s)", str(os.cpu_count())).strip()
    flags = info.get("Flags", "")
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    virt = info.get("Hypervisor vendor", "").strip()
    return f"{model}, {cores} cores ({isa}{', ' + virt + ' VM' if virt else ''}; {platform.system()} {platform.machine()})"


def write_section(heading: str, text: str, doc: Path = DOC) -> None:
    """Replaces (or appends) the section under ``heading``, leaving every other section as it is."""
    doc.parent.mkdir(parents=True, exist_ok=True)
    current = doc.read_text() if doc.exists() else "# Benchmarks\n\n"
    pattern = re.compile(rf"^{re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)
    body = text.rstrip() + "\n\n"
    updated = pattern.sub(lambda _: body, current) if pattern.search(current) else current.rstrip() + "\n\n" + body
    doc.write_text(updated.rstrip() + "\n")
