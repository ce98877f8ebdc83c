"""A 12-candidate sweep of the digits model three ways, side by side: serial, on Ray (2 workers), and on Ray
with a farm of 2 agents on the loopback; each way's wall time, and where a candidate's time goes.

    .venv/bin/python benchmarks/scale.py [--rounds 2] [--json out.json]

The three ways run in turn, A B C A B C ..., each with an empty candidate cache (nothing is
reused), through the command line as a user runs it: `edgeprune sweep ... [--ray] [--farm]`.
Ratios are taken round by round (the machine's speed drifts; a round's three runs are close in
time). The per-stage seconds (prune, lower, verify, measure, the device's own timing, evaluate)
come from the sweeps' own records (sweep.json, each candidate's `seconds`) and feed the model in
docs/scale.md. On one machine the farm's agents share its cores with the workers: this measures
the overheads of the fan-out, not what separate devices would give.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DIGITS = ROOT / "examples" / "digits_cnn.py"
# 12 candidates: dense, structured/unstructured 0.25 and 0.5, 2:4, each in fp32 and int8
SWEEP = ["--profile", "host", "--strategies", "structured,unstructured,nm", "--sparsities", "0.25,0.5",
         "--quantize", "none,int8"]
TOKEN = "scale-benchmark-token-0123456789ab"


def start_agents(count: int, folder: Path) -> tuple[list[subprocess.Popen], Path]:
    """Starts agents on the loopback; returns them and their farm file."""
    env = {**os.environ, "EDGEPRUNE_AGENT_TOKEN": TOKEN, "PYTHONPATH": str(ROOT)}
    procs, urls = [], []
    for i in range(count):
        log = folder / f"agent{i}.log"
        procs.append(subprocess.Popen([sys.executable, "-m", "edgeprune.cli", "agent", "serve", "--port", "0"],
                                      stdout=subprocess.DEVNULL, stderr=open(log, "w"), env=env))
        deadline = time.monotonic() + 60
        while not (found := re.search(r"listening on (\S+)", log.read_text())):
            if time.monotonic() > deadline:
                raise SystemExit(f"agent {i} did not start: {log.read_text()[-500:]}")
            time.sleep(0.1)
        urls.append(found.group(1))
    farm = folder / "devices.toml"
    farm.write_text("".join(f'[[agent]]\nname = "a{i}"\nurl = "{u}"\nprofile = "host"\n\n' for i, u in enumerate(urls)))
    return procs, farm


def run_sweep(way: str, flags: list[str], folder: Path, index: int) -> dict:
    """Returns one sweep's wall seconds and its candidates' records (an empty cache of its own)."""
    out, cache = folder / f"{way}-{index}", folder / f"cache-{way}-{index}"
    env = {**os.environ, "EDGEPRUNE_AGENT_TOKEN": TOKEN, "EDGEPRUNE_CACHE_DIR": str(cache), "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "edgeprune.cli", "sweep", str(DIGITS), *SWEEP, *flags, "-o", str(out),
                           "--json"], capture_output=True, text=True, env=env, timeout=3600)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{way} sweep failed ({done.returncode}): {done.stderr[-1500:]}")
    rows = json.loads(done.stdout)["candidates"]
    errors = [r["error"] for r in rows if r["error"]]
    if len(rows) != 12 or errors:
        raise SystemExit(f"{way}: {len(rows)} candidates, errors {errors[:2]}")
    return {"wall_s": wall, "rows": rows}


def stage_seconds(rows: list[dict]) -> dict[str, float]:
    """Returns the median seconds per candidate of each stage its record names."""
    stages = sorted({k for r in rows for k in r["seconds"]})
    return {s: round(statistics.median(r["seconds"].get(s, 0.0) for r in rows), 3) for s in stages}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    ways = {"serial": [], "ray": ["--ray"], "ray+farm": ["--ray", "--farm"]}
    with tempfile.TemporaryDirectory(prefix="edgeprune-scale-") as tmp:
        folder = Path(tmp)
        agents, farm = start_agents(2, folder)
        ways["ray+farm"] = ["--ray", "--farm", str(farm)]
        results: dict[str, list[dict]] = {w: [] for w in ways}
        try:
            for i in range(args.rounds):
                for way, flags in ways.items():
                    results[way].append(run_sweep(way, flags, folder, i))
                    print(f"round {i + 1} {way}: {results[way][-1]['wall_s']:.1f} s", flush=True)
        finally:
            for proc in agents:
                proc.kill()
    summary = {}
    for way, runs in results.items():
        ratios = [a["wall_s"] / s["wall_s"] for a, s in zip(runs, results["serial"], strict=True)]
        summary[way] = {"wall_s": [round(r["wall_s"], 1) for r in runs],
                        "median_wall_s": round(statistics.median(r["wall_s"] for r in runs), 1),
                        "time_vs_serial": [round(x, 3) for x in ratios],
                        "stage_s_per_candidate": stage_seconds([row for r in runs for row in r["rows"]])}
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
