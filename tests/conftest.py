"""Shared fixtures: the real digits workload, a CLI runner, and one shared dense build."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DIGITS = ROOT / "examples" / "digits_cnn.py"


CACHE = Path(tempfile.mkdtemp(prefix="edgeprune-test-cache-"))
os.environ["EDGEPRUNE_CACHE_DIR"] = str(CACHE)  # builds run in this process cache there too, never in ~/.cache


def run_cli(*args: str, env: dict | None = None, cwd: Path | None = None,
            separate: bool = False) -> subprocess.CompletedProcess:
    """Runs `edgeprune ARGS` and returns the result as a finished process.

    Through the command line's own entry point in this process (the same argument parsing,
    exit codes and output, minus an interpreter start and the imports, which add seconds to
    every call); in a fresh interpreter, as a user would start it, when the call changes the
    environment or ``separate`` asks for one (signals, kills, imports that must not happen).
    """
    if env is None and not separate:
        return _run_here(args, cwd)
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "EDGEPRUNE_CACHE_DIR": str(CACHE), **(env or {})}
    full_env.pop("EDGEPRUNE_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "edgeprune.cli", *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd or ROOT, timeout=600)


def _run_here(args: tuple[str, ...], cwd: Path | None) -> subprocess.CompletedProcess:
    import contextlib
    import io

    from edgeprune.cli import main

    out, err = io.StringIO(), io.StringIO()
    argv, here = sys.argv, os.getcwd()
    debug = os.environ.pop("EDGEPRUNE_DEBUG", None)
    sys.argv = ["edgeprune", *args]
    try:
        os.chdir(cwd or ROOT)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main()
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv = argv
        os.chdir(here)
        if debug is not None:
            os.environ["EDGEPRUNE_DEBUG"] = debug
    return subprocess.CompletedProcess(["edgeprune", *args], code, out.getvalue(), err.getvalue())


def run_main(args: list[str], capsys) -> tuple[int, str, str]:
    """Runs `edgeprune ARGS` through the CLI's main in this process, in the current folder:
    (exit code, stdout, stderr)."""
    proc = _run_here(tuple(args), Path.cwd())
    capsys.readouterr()  # nothing else the test printed is mistaken for the command's output
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture(scope="session")
def digits_build(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path, dict]:
    """The dense digits build for this machine's own profile, made once through the CLI: (process, folder, report)."""
    out = tmp_path_factory.mktemp("builds") / "digits"
    proc = run_cli("build", str(DIGITS), "--profile", "host", "-o", str(out), "--json")
    report = json.loads(proc.stdout) if proc.returncode in (0, 3) else {}
    return proc, out, report


def build_report(options) -> dict:
    """Runs a whole build in this process and returns its report as report.json holds it."""
    from edgeprune.pipeline import run_build

    return run_build(options).to_dict()


def stored_report(folder: Path, report: dict, **sections) -> Path:
    """Writes a copy of a real report with some sections replaced (a report to re-check) and returns its path."""
    path = folder / "report.json"
    path.write_text(json.dumps({**report, **sections}))
    return path


def start_agent(token: str, *flags: str) -> tuple[subprocess.Popen, str]:
    """Starts a real `edgeprune agent serve` on a free loopback port: (the process, its URL)."""
    import queue
    import threading
    import time

    env = {**os.environ, "PYTHONPATH": str(ROOT), "EDGEPRUNE_AGENT_TOKEN": token}
    proc = subprocess.Popen([sys.executable, "-m", "edgeprune.cli", "agent", "serve", "--port", "0", *flags],
                            stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stderr], daemon=True).start()
    url, deadline = None, time.monotonic() + 60
    while url is None and time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            assert proc.poll() is None, "the agent exited at start"
            continue
        if "listening on" in line:
            url = line.split("listening on ")[1].split()[0]
    assert url and url.startswith("http://127.0.0.1:"), "the agent did not start on loopback"
    return proc, url



@pytest.fixture
def counting_proxy():
    """A proxy on the loopback that counts the connections made to it and answers none: set as
    HTTP(S)_PROXY, it sees every request a library would send out. Yields (its URL, the count)."""
    import socket
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.2)
    seen: list[bytes] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except (TimeoutError, OSError):
                continue
            with conn:
                conn.settimeout(1)
                try:
                    seen.append(conn.recv(256) or b"(connected)")
                except OSError:
                    seen.append(b"(connected)")

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}", seen
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def offline_env(proxy: str, home: Path) -> dict[str, str]:
    """The environment of a user whose requests all go through ``proxy`` and whose caches are empty."""
    return {"HTTP_PROXY": proxy, "HTTPS_PROXY": proxy, "http_proxy": proxy, "https_proxy": proxy,
            "ALL_PROXY": proxy, "NO_PROXY": "", "no_proxy": "", "HF_HUB_OFFLINE": "", "TRANSFORMERS_OFFLINE": "",
            "TORCH_HOME": str(home / "torch"), "HF_HOME": str(home / "hf"), "XDG_CACHE_HOME": str(home / "cache")}


def library_skip_reason(module: str) -> str | None:
    """Returns why a library's test cannot run in this environment, or None.

    In the environment `make test-vision` builds for them (EDGEPRUNE_VISION_TESTS=1), a
    library that does not import is an error, not a reason to skip.
    """
    try:
        __import__(module)
    except Exception as exc:  # missing, or (torchvision's CUDA-only wheel for torch 2.13) not loading
        if os.environ.get("EDGEPRUNE_VISION_TESTS"):
            raise
        return (f"{module} does not import here ({type(exc).__name__}: {str(exc).strip().splitlines()[0][:120]}); "
                "`make test` runs this test in .venv-vision (torch 2.14.1, torchvision 0.29.1, timm)")
    return None
