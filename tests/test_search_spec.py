"""An evaluation as plain data: a spec crosses a process, and a worker given only the spec records
what the serial search records for the same candidate."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from edgeprune.errors import InputError
from edgeprune.gate import Budgets
from edgeprune.planning import make_plan
from edgeprune.profile import load_profile
from edgeprune.search.candidates import Candidate, CandidateEvaluator, Outcome
from edgeprune.search.evaluate import Context
from edgeprune.search.spec import EvaluationSpec, evaluate_candidate, forget_evaluations
from edgeprune.specs import load_workload

from conftest import CACHE, ROOT

TINY = str(ROOT / "tests" / "tiny_workload.py")
# estimated, not timed: a Jetson profile without its device gives the same latency in any process
PROFILE = "jetson-orin-nano"
CANDIDATES = [Candidate("structured", 0.5, "none"), Candidate("unstructured", 0.5, "int8"), Candidate("none", 0.0, "none")]
# what decides nothing (how long it took) or is a path of the process that built it
DETERMINISTIC = ("latency_ms", "latency_source", "size_bytes", "macs", "nonzero_params", "metric", "drop", "verified",
                 "misses", "error", "peak_memory_mb")

WORKER = """
import json, sys
from edgeprune.search.candidates import Candidate
from edgeprune.search.spec import EvaluationSpec, evaluate_candidate
spec = EvaluationSpec.from_json(sys.argv[1])
print(json.dumps([evaluate_candidate(spec, Candidate(**c)).to_dict() for c in json.loads(sys.argv[2])]))
"""


def _spec(**options) -> EvaluationSpec:
    workload = load_workload(TINY)
    plan = make_plan(workload, load_profile(PROFILE), "auto", None, "none", "onnx", None)
    return EvaluationSpec.of(TINY, PROFILE, plan, budgets=Budgets(max_size_mb=1.0), use_cache=False, **options)


def test_a_spec_round_trips_through_json():
    spec = _spec(threads=2, prompt_tokens=64)
    again = EvaluationSpec.from_json(spec.to_json())
    assert again == spec and again.to_json() == spec.to_json()
    assert json.loads(spec.to_json())["plan"]["format"] == "onnx"


def test_a_workload_held_as_an_object_has_no_spec():
    workload = load_workload(TINY)
    plan = make_plan(workload, load_profile(PROFILE), "auto", None, "none", "onnx", None)
    with pytest.raises(InputError, match="cannot be loaded again by another process") as info:
        EvaluationSpec.of(workload, PROFILE, plan)
    assert "\n" not in str(info.value)


def test_a_worker_given_only_the_spec_records_what_the_serial_search_records():
    spec = _spec()
    # serial, in this process, through the evaluator the sweep uses
    workload = load_workload(TINY)
    with Context(workload, load_profile(PROFILE), spec.budgets) as ctx, \
            CandidateEvaluator(ctx, spec.plan, use_cache=False) as evaluator:
        serial = [evaluator.score(c) for c in CANDIDATES]
    # a fresh interpreter that has nothing but the spec's JSON
    proc = subprocess.run([sys.executable, "-c", WORKER, spec.to_json(), json.dumps([
        {"kind": c.kind, "sparsity": c.sparsity, "quantize": c.quantize} for c in CANDIDATES])],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
        env={**__import__("os").environ, "PYTHONPATH": str(ROOT), "EDGEPRUNE_CACHE_DIR": str(CACHE)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    worker = [Outcome.from_dict(d) for d in json.loads(proc.stdout.strip().splitlines()[-1])]
    for mine, theirs in zip(serial, worker, strict=True):
        assert mine.error is None, mine.error
        assert {k: getattr(mine, k) for k in DETERMINISTIC} == {k: getattr(theirs, k) for k in DETERMINISTIC}
    # and in this process: the evaluator is built once per spec and reused for the next candidate
    here = [evaluate_candidate(spec, c) for c in CANDIDATES]
    assert [o.macs for o in here] == [o.macs for o in serial]
    forget_evaluations()


def test_two_agents_on_one_kind_of_device_share_their_candidates():
    """The candidate cache is keyed by what decides a measurement (the device and its runtimes), not by
    the URL of the agent that made it: a second agent on an identical device is served from the cache."""
    from edgeprune.measure.agent_client import AgentClient

    from conftest import start_agent

    token = "spec-token-0123456789abcdef0123"
    agents = [start_agent(token) for _ in range(2)]
    try:
        workload = load_workload(TINY)
        plan = make_plan(workload, load_profile("host"), "auto", None, "none", "onnx", None)
        paths = []
        for _, url in agents:
            with Context(workload, load_profile("host"), Budgets(), agent=AgentClient(url, token=token)) as ctx:
                evaluator = CandidateEvaluator(ctx, plan)
                paths.append(evaluator.cache.path({"kind": "structured", "sparsity": 0.5, "quantize": "none"}, "cost"))
        assert agents[0][1] != agents[1][1] and paths[0] == paths[1]
    finally:
        for proc, _ in agents:
            proc.terminate()
            proc.wait(10)
