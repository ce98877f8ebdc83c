"""The digits sweep behind the README's Pareto plot: every strategy x sparsity x precision, measured.

Runs `edgeprune sweep examples/digits_cnn.py --profile x86-avx2` with a fresh candidate cache,
copies its plot to docs/pareto-digits.png and writes its table into the section
"## Sweep (digits, x86-avx2)" of docs/benchmarks.md.

    .venv/bin/python benchmarks/sweep_digits.py     # under a minute on two cores
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from writeup import machine, write_section  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
HEADING = "## Sweep (digits, x86-avx2)"
COMMAND = "edgeprune sweep examples/digits_cnn.py --profile x86-avx2 -o out/sweep-digits"


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "edgeprune.cli", *COMMAND.split()[1:5], "-o", f"{tmp}/sweep"],
                              capture_output=True, text=True, cwd=ROOT,
                              env={**os.environ, "EDGEPRUNE_CACHE_DIR": f"{tmp}/cache"})
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(proc.stderr)
        shutil.copyfile(f"{tmp}/sweep/pareto.png", ROOT / "docs" / "pareto-digits.png")
        table = Path(f"{tmp}/sweep/sweep.md").read_text().split("\n", 1)[1].strip()
    text = "\n".join([
        HEADING, "",
        f"Machine: {machine()}. `{COMMAND}` took {seconds:.0f} s from an empty cache "
        f"(`python benchmarks/sweep_digits.py`, {time.strftime('%Y-%m-%d')}). Latencies are the sweep's quick "
        "measurements (one candidate at a time, not side by side), so neighbouring rows differ by noise as well; "
        "no recovery fine-tuning. Plot: `docs/pareto-digits.png` (shown in the README).", "",
        table,
    ])
    write_section(HEADING, text)
    print(text)


if __name__ == "__main__":
    main()
