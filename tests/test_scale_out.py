"""A device farm and sweeps on Ray: real agents on the loopback, a real local Ray (2 CPUs), the digits model.

Each agent writes its own access log; a measurement is one `POST /v1/measure ... 200` line in it,
so "measured exactly once" is counted where the measurements happen, not where they are asked for.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import DIGITS, ROOT, run_cli, run_main

TOKEN = "farm-test-token-0123456789abcdef"
MEASURED = re.compile(r'"POST /v1/measure HTTP/1.1" 200')
# the dense model and structured 0.5 (four), and 0.6 and 0.75 beside them (eight), each in fp32 and int8
FOUR = ("--profile", "host", "--strategies", "structured", "--sparsities", "0.5", "--quantize", "none,int8")
EIGHT = ("--profile", "host", "--strategies", "structured", "--sparsities", "0.5,0.6,0.75", "--quantize", "none,int8")

pytest.importorskip("ray", reason="Ray is the `ray` extra (in the dev install): pip install 'edgeprune[ray]'")


class LoggedAgent:
    """A real `edgeprune agent serve` on a free loopback port, its stderr (the access log) in a file."""

    def __init__(self, log: Path, token_env: str = "EDGEPRUNE_AGENT_TOKEN") -> None:
        self.log = log
        env = {**os.environ, "PYTHONPATH": str(ROOT), token_env: TOKEN}
        self.proc = subprocess.Popen([sys.executable, "-m", "edgeprune.cli", "agent", "serve", "--port", "0"],
                                     stdout=subprocess.DEVNULL, stderr=open(log, "w"), env=env, cwd=ROOT)
        deadline = time.monotonic() + 60
        while not (found := re.search(r"listening on (\S+)", log.read_text())):
            assert self.proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        self.url = found.group(1)

    def measured(self) -> int:
        return len(MEASURED.findall(self.log.read_text()))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


@pytest.fixture
def farm(tmp_path, monkeypatch):
    """Three agents that stand for profile host, and their farm file."""
    monkeypatch.setenv("EDGEPRUNE_AGENT_TOKEN", TOKEN)
    agents = [LoggedAgent(tmp_path / f"a{i}.log") for i in (1, 2, 3)]
    path = tmp_path / "devices.toml"
    path.write_text("".join(f'[[agent]]\nname = "a{i}"\nurl = "{a.url}"\nprofile = "host"\n\n'
                            for i, a in enumerate(agents, 1)))
    yield path, agents
    for agent in agents:
        agent.stop()


def _sweep(farm_file: Path, out: Path, cache: Path, *extra: str, wait: bool = True, grid: tuple = EIGHT):
    args = [sys.executable, "-m", "edgeprune.cli", "sweep", str(DIGITS), *grid, "--farm", str(farm_file),
            "-o", str(out), "--json", *extra]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "EDGEPRUNE_CACHE_DIR": str(cache)}
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    if not wait:
        return proc
    out_text, err_text = proc.communicate(timeout=600)
    return subprocess.CompletedProcess(args, proc.returncode, out_text, err_text)


def _fronts(summary: dict) -> tuple[set, set]:
    rows = summary["candidates"]
    return ({r["candidate"]["label"] for r in rows if r["pareto_latency"]},
            {r["candidate"]["label"] for r in rows if r["pareto_size"]})


def test_a_ray_sweep_interrupted_and_resumed_while_an_agent_dies_measures_each_candidate_once(farm, tmp_path):
    farm_file, agents = farm
    cache = tmp_path / "cache"
    # interrupted once a candidate is measured and cached: exit 130, nothing half-written
    first = _sweep(farm_file, tmp_path / "first", cache, "--ray", wait=False, grid=FOUR)
    deadline = time.monotonic() + 300
    while not list((cache / "candidates").glob("*.json")):
        assert first.poll() is None and time.monotonic() < deadline, first.stderr.read()[-3000:]
        time.sleep(0.05)
    first.send_signal(signal.SIGINT)
    _, err = first.communicate(timeout=120)
    assert first.returncode == 130, err[-3000:]
    assert not (tmp_path / "first").exists()
    cached = len(list((cache / "candidates").glob("*.json")))
    assert 1 <= cached < 4, cached  # one measured but not yet scored when interrupted is missing
    before = [a.measured() for a in agents]
    offsets = [len(a.log.read_text()) for a in agents]

    # resumed on Ray over a grid of eight (those four among them): at least five jobs for three agents, so
    # one agent opens a second job after a measurement of this sweep, and it is killed inside that job
    # (its `GET /v1/info` opens the job: upload, then timing), which must move to another agent
    def kill_inside_a_second_job() -> None:
        while resumed.poll() is None:
            for agent, offset in zip(agents, offsets, strict=True):
                text = agent.log.read_text()[offset:]
                measured = MEASURED.search(text)
                if measured and "GET /v1/info" in text[measured.end():]:
                    agent.proc.kill()
                    killed.append(agent)
                    return
            time.sleep(0.02)

    killed: list[LoggedAgent] = []
    resumed = _sweep(farm_file, tmp_path / "ray", cache, "--ray", wait=False, grid=EIGHT)
    watcher = threading.Thread(target=kill_inside_a_second_job, daemon=True)
    watcher.start()
    out, err = resumed.communicate(timeout=600)
    watcher.join(5)
    assert resumed.returncode == 0, err[-3000:]
    summary = json.loads(out)
    rows = summary["candidates"]
    assert len(rows) == 8 and all(r["error"] is None and r["latency_source"] == "measured" for r in rows), rows
    # every latency names the agent that measured it, and none was measured twice or lost
    assert all(re.fullmatch(r"a[123] \(http://127\.0\.0\.1:\d+\)", r["measured_by"]) for r in rows)
    assert killed, "no agent opened a second job: none was killed"
    now = [a.measured() - b for a, b in zip(agents, before, strict=True)]
    assert sum(now) == 8 - cached, (now, cached)
    # the job the killed agent held was measured by another agent, and it was asked nothing more
    state, victim = summary["agents"], f"a{agents.index(killed[0]) + 1}"
    assert state[victim]["state"] == "down" and state[victim]["failed"] == 1, state
    assert [state[n]["done"] for n in ("a1", "a2", "a3")] == now, state
    # a serial sweep on the same cached candidates chooses the same Pareto sets, and measures nothing
    serial = _sweep(farm_file, tmp_path / "serial", cache, grid=EIGHT)
    assert serial.returncode == 0, serial.stderr[-3000:]
    assert _fronts(json.loads(serial.stdout)) == _fronts(summary)
    assert sum(a.measured() for a in agents) == sum(before) + 8 - cached


def test_farm_status_shows_each_agent_and_which_are_down(farm, tmp_path, capsys):
    farm_file, agents = farm
    agents[2].stop()
    code, out, _ = run_main(["farm", "status", str(farm_file), "--json"], capsys)
    rows = {r["name"]: r for r in json.loads(out)["agents"]}
    assert code == 3 and [rows[n]["health"] for n in ("a1", "a2", "a3")] == ["up", "up", "down"]
    assert rows["a1"]["runtimes"]["onnxruntime"] and rows["a1"]["queue"] == 0 and rows["a1"]["measurements"] == 0
    assert "cannot reach the agent" in rows["a3"]["why"]


@pytest.mark.parametrize("text, expected", [
    (None, "no such file"),
    ("[[agent]\nname = 'x'", "not TOML"),
    ("", "agent: Field required"),
    ("[[agent]]\nname = 'a'\nurl = 'http://127.0.0.1:1'\n", "agent.0.profile: Field required"),
    ("[[agent]]\nname = 'a'\nurl = 'ftp://x'\nprofile = 'host'\n", "agent.0.url"),
    ("[[agent]]\nname = 'a b'\nurl = 'http://127.0.0.1:1'\nprofile = 'host'\n", "agent.0.name"),
    ("[[agent]]\nname = 'a'\nurl = 'http://127.0.0.1:1'\nprofile = 'host'\ncolour = 1\n", "agent.0.colour"),
    ("[[agent]]\nname = 'a'\nurl = 'http://127.0.0.1:1'\nprofile = 'nope'\n", "unknown profile"),
    ("[[agent]]\nname = 'a'\nurl = 'http://127.0.0.1:1'\nprofile = 'host'\n" * 2, "two agents are named 'a'"),
    ("[[agent]]\nname = 'a'\nurl = 'http://127.0.0.1:1'\nprofile = 'jetson-orin-nano'\n",
     "no agent stands for profile host"),
    ("[[agent]]\nname = 'a'\nurl = 'http://127.0.0.1:1'\nprofile = 'host'\ntoken_env = 'NO_SUCH_TOKEN_VAR'\n",
     "NO_SUCH_TOKEN_VAR is not set"),
])
def test_a_bad_farm_file_is_refused_in_one_line_before_any_work(text, expected, tmp_path, capsys):
    path = tmp_path / "devices.toml"
    if text is not None:
        path.write_text(text)
    for command in (["build", str(DIGITS), "--profile", "host", "-o", str(tmp_path / "b")],
                    ["sweep", str(DIGITS), "--profile", "host", "-o", str(tmp_path / "s")]):
        code, _, err = run_main([*command, "--farm", str(path)], capsys)
        assert code == 2 and expected in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "b").exists() and not (tmp_path / "s").exists()


def test_device_and_farm_together_are_refused(tmp_path):
    path = tmp_path / "devices.toml"
    path.write_text("[[agent]]\nname = 'a'\nurl = 'http://127.0.0.1:1'\nprofile = 'host'\n")
    done = run_cli("bench", str(tmp_path / "m.onnx"), "--device", "http://127.0.0.1:1", "--farm", str(path))
    assert done.returncode == 2 and "not both" in done.stderr


def test_bench_on_a_farm_moves_past_a_dead_agent(farm, tmp_path, capsys):
    import torch

    farm_file, agents = farm
    agents[0].stop()
    model = tmp_path / "m.onnx"
    torch.onnx.export(torch.nn.Linear(8, 4), (torch.randn(1, 8),), str(model), dynamo=False)
    code, out, err = run_main(["bench", str(model), "--farm", str(farm_file), "--quick", "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["agent"].split(" ")[0] in ("a2", "a3")


def test_a_batched_budget_search_returns_the_serial_searchs_plan_in_fewer_rounds(tmp_path, monkeypatch):
    """The budget search on Ray evaluates several sparsities a round (as many as there are workers); the
    least pruning that meets the budget is the same as one-at-a-time bisection finds. A size budget and an
    estimated profile make every candidate's pass or miss the same in any process."""
    from dataclasses import replace

    from edgeprune.gate import Budgets
    from edgeprune.planning import make_plan
    from edgeprune.profile import load_profile
    from edgeprune.search.budget import choose_plan
    from edgeprune.search.evaluate import Context
    from edgeprune.search.fanout import RayRun
    from edgeprune.search.spec import EvaluationSpec
    from edgeprune.specs import load_workload

    profile, budgets = load_profile("x86-avx2"), Budgets(max_size_mb=1.0)
    workload = load_workload(str(DIGITS))
    plan = make_plan(workload, profile, "auto", None, "none", "onnx", None, "2:4", budgets)
    assert plan.search is not None and plan.kind == "structured", plan
    plan = replace(plan, search=(0.4, 0.7))  # seven sparsities; the answer (0.55) lies inside
    chosen, rounds = {}, {}
    for way in ("serial", "batched"):
        monkeypatch.setenv("EDGEPRUNE_CACHE_DIR", str(tmp_path / way))  # nothing shared between the two
        said = []
        with Context(workload, profile, budgets) as ctx:
            if way == "serial":
                found, record = choose_plan(ctx, plan, said.append)
            else:
                spec = EvaluationSpec.of(str(DIGITS), profile.name, plan, budgets=budgets)
                with RayRun(spec, cpus=2) as run:  # two workers, whatever this machine has
                    assert run.width == 2
                    found, record = choose_plan(ctx, plan, said.append, width=run.width, elsewhere=run)
        chosen[way] = (found.kind, found.sparsity, found.quantization)
        rounds[way] = sum(s.startswith("candidate ") for s in said)
    assert chosen["batched"] == chosen["serial"] and 0.4 < chosen["serial"][1] < 0.7, chosen
    assert rounds["batched"] < rounds["serial"], rounds


def test_a_build_on_a_farm_is_measured_by_a_live_agent_of_its_profile(farm, tmp_path, capsys):
    farm_file, agents = farm
    agents[0].stop()
    with farm_file.open("a") as f:  # an agent of another profile is never asked
        f.write(f'[[agent]]\nname = "nano"\nurl = "{agents[1].url}"\nprofile = "jetson-orin-nano"\n')
    code, out, err = run_main(["build", str(ROOT / "tests" / "tiny_workload.py"), "--profile", "host", "--quantize",
                               "none", "--farm", str(farm_file), "-o", str(tmp_path / "out"), "--json"], capsys)
    assert code == 0, err
    latency = json.loads(out)["latency"]
    assert latency["source"] == "measured" and latency["baseline_median_ms"] is not None
    assert re.fullmatch(r"a[23] \(http://127\.0\.0\.1:\d+\)", latency["agent"]), latency["agent"]
    assert sum(a.measured() for a in agents[1:]) == 1  # the artifact and its baseline, in one upload
