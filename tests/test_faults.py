"""Faults a build must survive: killed mid-way, two builds into one folder, interrupted."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import CACHE, DIGITS, ROOT, run_cli


def _start(out: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "EDGEPRUNE_CACHE_DIR": str(CACHE)}
    return subprocess.Popen([sys.executable, "-m", "edgeprune.cli", "build", str(DIGITS), "--profile", "host",
                             "-o", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _wait_for(condition, proc: subprocess.Popen, seconds: float = 120.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert proc.poll() is None, f"the build ended before the moment to kill it: {proc.communicate()}"
        assert time.monotonic() < deadline, "the moment to kill the build never came"
        time.sleep(0.02)


def _staging(out: Path) -> list[Path]:
    return list(out.parent.glob(f".{out.name}.staging-*"))


def _previous_build(digits_build, out: Path) -> None:
    """Puts a good build of the same command in ``out`` (the session's, copied: the same bytes a build writes)."""
    proc, folder, _ = digits_build
    assert proc.returncode == 0, proc.stderr
    shutil.copytree(folder, out)


def test_a_build_killed_while_lowering_or_measuring_leaves_the_previous_build_whole(tmp_path, digits_build):
    out = tmp_path / "digits"
    _previous_build(digits_build, out)
    good = (out / "report.json").read_text()
    moments = {
        # the staging folder appears as the evaluation starts: pruning and lowering run in it
        "lowering": lambda: bool(_staging(out)),
        # the artifact is in place: verification, then the measurement, run now
        "measuring": lambda: any((s / "model.onnx").exists() for s in _staging(out)),
    }
    for moment, reached in moments.items():
        proc = _start(out)
        _wait_for(reached, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        assert (out / "report.json").read_text() == good, f"killed while {moment}: the previous build changed"
        assert json.loads(good)["passed"] and (out / "model.onnx").exists()
        assert _staging(out), "the killed build left its staging folder (it cannot clean up after SIGKILL)"
    again = run_cli("build", str(DIGITS), "--profile", "host", "-o", str(out))
    assert again.returncode == 0, again.stderr
    assert not _staging(out) and not list(tmp_path.glob(".digits.lock")), "leftovers survived the next build"


def test_two_builds_into_one_folder_one_wins_the_other_is_refused(tmp_path):
    out = tmp_path / "digits"
    procs = [_start(out), _start(out)]
    results = [p.communicate(timeout=300) + (p.returncode,) for p in procs]
    codes = sorted(r[2] for r in results)
    assert codes == [0, 2], [r[1][-300:] for r in results]
    loser = next(r for r in results if r[2] == 2)
    assert "another build" in loser[1] and len(loser[1].strip().splitlines()) <= 2  # its progress line, its error
    assert json.loads((out / "report.json").read_text())["passed"]
    assert not _staging(out)


def test_ctrl_c_during_a_build_exits_130_and_keeps_the_previous_build(tmp_path, digits_build):
    out = tmp_path / "digits"
    _previous_build(digits_build, out)
    good = (out / "report.json").read_text()
    proc = _start(out)
    _wait_for(lambda: bool(_staging(out)), proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err
    assert (out / "report.json").read_text() == good and not _staging(out)


def test_a_damaged_candidate_cache_is_discarded_with_a_warning_and_rebuilt(tmp_path, monkeypatch):
    tiny = str(ROOT / "tests" / "tiny_workload.py")
    args = ("build", tiny, "--profile", "jetson-orin-nano", "--format", "onnx", "--latency-budget-ms", "50")
    cache = tmp_path / "cache"
    monkeypatch.setenv("EDGEPRUNE_CACHE_DIR", str(cache))  # read by each build (in this process)
    first = run_cli(*args, "-o", str(tmp_path / "a"), "--json")
    assert first.returncode == 0, first.stderr
    entries = sorted((cache / "candidates").glob("*.json"))
    assert len(entries) >= 2
    entries[0].write_text("{ not json")
    entries[1].write_text(json.dumps({"candidate": {"kind": "structured", "sparsity": 0.0, "quantize": "none"},
                                      "latency_ms": "fast", "misses": "none"}))
    for extra in entries[2:]:
        extra.unlink()
        extra.mkdir()  # a folder where an entry should be
    again = run_cli(*args, "-o", str(tmp_path / "b"), "--json")
    assert again.returncode == 0, again.stderr
    assert again.stderr.count("warning: discarded a damaged cache entry") >= 2 and "Traceback" not in again.stderr
    assert json.loads(again.stdout)["search"]["chosen"] == json.loads(first.stdout)["search"]["chosen"]
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / "candidates").write_text("a file where the cache folder should be")
    monkeypatch.setenv("EDGEPRUNE_CACHE_DIR", str(blocked))
    third = run_cli(*args, "-o", str(tmp_path / "c"))
    assert third.returncode == 0 and "cannot write the candidate cache" in third.stderr, third.stderr


# Ctrl-C lands while this module is being imported: the program's own start-up, the native
# libraries (torch, ONNX, ONNX Runtime) and the pipeline, which loads after the flags are checked
START_UP = ("click", "rich.console", "edgeprune.cli.build", "torch", "onnx", "onnxruntime", "edgeprune.pipeline")
# the program as a user starts it, but with Ctrl-C pressed the moment the module named first is imported
_CTRL_C_AT_IMPORT = """
import importlib.abc, os, runpy, signal, sys
target = sys.argv[1]
class CtrlC(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target_=None):
        if name == target:
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGINT)
        return None
sys.meta_path.insert(0, CtrlC())
sys.argv = ["edgeprune", *sys.argv[2:]]
runpy.run_module("edgeprune.cli", run_name="__main__")
"""


def test_ctrl_c_at_any_moment_of_start_up_is_exit_130_never_an_internal_error(tmp_path):
    """The interrupt comes at named moments (a module's import), not after guessed sleeps: every
    case is interrupted, none can finish first and pass without testing anything."""
    for i, module in enumerate(START_UP):
        env = {**os.environ, "PYTHONPATH": str(ROOT), "EDGEPRUNE_CACHE_DIR": str(CACHE)}
        proc = subprocess.run([sys.executable, "-c", _CTRL_C_AT_IMPORT, module, "build", str(DIGITS), "--profile",
                               "host", "-o", str(tmp_path / f"b{i}")], capture_output=True, text=True, env=env,
                              timeout=120)
        assert proc.returncode == 130, (module, proc.returncode, proc.stderr[-500:])
        assert "interrupted" in proc.stderr and "internal error" not in proc.stderr, (module, proc.stderr)
        assert "Traceback" not in proc.stderr, (module, proc.stderr)
        assert not (tmp_path / f"b{i}").exists() and not _staging(tmp_path / f"b{i}")
