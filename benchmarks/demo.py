"""The demo build (`make demo`): targets/digits-host.toml built several times from a cold candidate cache.

Each run is a fresh process with an empty candidate cache, as on a fresh machine; the section
"## The demo build (make demo)" of docs/benchmarks.md gets each run's exit code, wall and CPU
time, the load of the machine when it started, what the search chose and the budgets' values.

    .venv/bin/python benchmarks/demo.py [RUNS]      # about a minute a run on two idle cores
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from writeup import machine, write_section  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
HEADING = "## The demo build (make demo)"


def one_run(tmp: Path, index: int) -> dict:
    """Returns one cold build's exit code, times, load and report."""
    load = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "edgeprune.cli", "build", "targets/digits-host.toml",
                           "-o", str(tmp / f"out{index}"), "--json"], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "EDGEPRUNE_CACHE_DIR": str(tmp / f"cache{index}")})
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode not in (0, 3):
        raise SystemExit(proc.stderr)
    return {"code": proc.returncode, "wall": wall, "cpu": cpu, "load": load, "report": json.loads(proc.stdout)}


def row(run: dict) -> str:
    report = run["report"]
    budgets = {b["name"]: b for b in report["budgets"]}
    ratio = budgets["latency_median_ratio"]["value"]
    acc = report["accuracy"]
    worst = next(s for s in acc["slices"] if s["name"] == acc["worst_slice"])
    strategy = report["strategy"]
    return (f"| {run['code']} | {run['wall']:.0f} | {run['cpu']:.0f} | {run['load']:.1f} | "
            f"{report['search']['chosen']} | {len(report['search']['candidates'])} | "
            f"{ratio if ratio is not None else '—'} | {report['artifact']['size_bytes'] / 1e6:.3f} | "
            f"{acc['pruned']:.4f} ({acc['drop']:+.4f}) | {worst['name']} ({worst['drop']:+.4f}) | "
            f"{'PASSED' if report['passed'] else 'FAILED'} ({strategy['kind']}) |")


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    with tempfile.TemporaryDirectory() as tmp:
        results = [one_run(Path(tmp), i) for i in range(runs)]
    last = results[-1]["report"]
    lines = [
        HEADING, "",
        f"Machine: {machine()}. Command: `python benchmarks/demo.py {runs}` ({time.strftime('%Y-%m-%d')}): "
        "`edgeprune build targets/digits-host.toml` in a fresh process with an empty candidate cache each run, "
        "as `make demo` runs it on a fresh machine (set-up not included). CPU is user + system time of the "
        "build process; load is the 1-minute load average when the run started (the machine is shared).", "",
        "| exit | wall s | CPU s | load | chosen | candidates | latency ratio | MB | accuracy (drop) | "
        "worst digit (drop) | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *[row(r) for r in results], "",
        f"Latency of the last run: {last['latency']['median_ms']:.3f} ms against the dense model's "
        f"{last['latency']['baseline_median_ms']:.3f} ms, timed side by side. Why: "
        + " ".join(last["strategy"]["reasons"][-1:]), "",
    ]
    write_section(HEADING, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
