"""The device agent, started for real on loopback: auth, limits, bad uploads, queueing, builds."""

from __future__ import annotations

import http.client
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zipfile

import numpy as np
import pytest

from edgeprune.device.server import Agent, AgentConfig
from edgeprune.device.wire import RequestError, pack_upload
from edgeprune.timing import Protocol
from edgeprune.uploads import UploadModel

from conftest import ROOT, run_cli, start_agent

TOKEN = "test-token-0123456789abcdef"
QUICK = {"warmup_s": 0.02, "round_s": 0.05, "min_rounds": 3, "max_rounds": 4}
TINY = ROOT / "tests" / "tiny_workload.py"


@pytest.fixture(scope="module")
def agent_url():
    """A real `edgeprune agent serve` on a free loopback port that stops by itself when idle."""
    proc, url = start_agent(TOKEN, "--max-upload-mb", "2", "--idle-exit-s", "120", "--queue-timeout-s", "60")
    yield url
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    """A small real CNN (conv, relu, linear head) as an ONNX file taking 1x3x16x16."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[3, 3]), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Flatten", ["r"], ["f"]), helper.make_node("Gemm", ["f", "fc"], ["y"], transB=1)]
    inits = [numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal((4, 8 * 14 * 14)).astype(np.float32), "fc")]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], inits)
    path = tmp_path_factory.mktemp("m") / "tiny.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    return path


def _get(url, token=TOKEN):
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _post(url, body: bytes, token=TOKEN):
    req = urllib.request.Request(url + "/v1/measure", data=body, method="POST",
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/zip"})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _zip(manifest: dict, members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        zf.writestr("manifest.json", json.dumps(manifest))
    return buf.getvalue()


def _npy(shape=(1, 3, 16, 16)) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.random.default_rng(0).random(shape, dtype=np.float32))
    return buf.getvalue()


def _manifest(member="m.onnx", fmt="onnx", **extra):
    return {"version": 1, "models": [{"role": "artifact", "format": fmt, "member": member}],
            "inputs": ["x.npy"], "protocol": QUICK, **extra}


def test_token_is_required_and_checked(agent_url):
    assert _get(agent_url + "/v1/health", token=None) == (200, {"ok": True})
    assert _get(agent_url + "/v1/info", token=None)[0] == 401
    assert _get(agent_url + "/v1/info", token=TOKEN[:-1] + "X")[0] == 401
    assert _get(agent_url + "/v1/info", token=TOKEN + "0")[0] == 401
    status, info = _get(agent_url + "/v1/info")
    assert status == 200 and info["protocol"] == 1 and "onnxruntime" in info["runtimes"]
    assert info["max_upload_bytes"] == 2 * 1024 * 1024
    status, body = _post(agent_url, _zip(_manifest(), {}), token="wrong-token-wrong-token")
    assert status == 401 and "token" in body["error"]


def test_measures_an_uploaded_onnx_model(agent_url, tiny_onnx):
    status, reply = _post(agent_url, _zip(_manifest(), {"m.onnx": tiny_onnx.read_bytes(), "x.npy": _npy()}))
    assert status == 200, reply
    stats = reply["results"]["artifact"]
    assert stats["runs"] >= 3 * stats["rounds"] and 0 < stats["min_ms"] <= stats["median_ms"] <= stats["p90_ms"]
    assert stats["runtime"].startswith("onnxruntime") and reply["device"]


def test_bad_token_unreachable_agent_and_missing_token_are_exit_2_with_one_line(agent_url, tiny_onnx):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = {k: v for k, v in os.environ.items() if k not in ("EDGEPRUNE_AGENT_TOKEN", "EDGEPRUNE_DEBUG")}
    base["PYTHONPATH"] = str(ROOT)
    cases = [  # (device URL, token, the message a user sees)
        (agent_url, "not-the-token-at-all", "refused the token (HTTP 401)"),
        (f"http://127.0.0.1:{port}", TOKEN, "cannot reach the agent"),
        (agent_url, None, "EDGEPRUNE_AGENT_TOKEN is not set"),
    ]
    # run side by side: each is a fresh interpreter, as a user would start it
    procs = [subprocess.Popen([sys.executable, "-m", "edgeprune.cli", "bench", str(tiny_onnx), "--device", url],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                              env={**base, **({"EDGEPRUNE_AGENT_TOKEN": token} if token else {})})
             for url, token, _ in cases]
    for proc, (_, _, message) in zip(procs, cases, strict=True):
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 2 and message in stderr and "Traceback" not in stderr, stderr
        assert len([line for line in stderr.splitlines() if line.strip()]) <= 3  # one message, maybe wrapped


def test_oversize_upload_is_413_and_the_agent_keeps_serving(agent_url, tiny_onnx):
    big = os.urandom(3 * 1024 * 1024)
    status, body = _post(agent_url, _zip(_manifest(), {"m.onnx": big, "x.npy": _npy()}))
    assert status == 413 and "limit" in body["error"]
    # a small upload that would inflate past the limit (a zip bomb) is refused before inflating
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("m.onnx", bytes(3 * 1024 * 1024))
        zf.writestr("manifest.json", json.dumps(_manifest()))
    assert len(buf.getvalue()) < 100_000
    status, body = _post(agent_url, buf.getvalue())
    assert status == 413 and "unpacks past" in body["error"]
    assert _get(agent_url + "/v1/info")[0] == 200


def test_garbage_truncated_and_unsafe_uploads_are_refused_and_the_agent_survives(agent_url, tiny_onnx, tmp_path):
    model, x = tiny_onnx.read_bytes(), _npy()
    cases = [
        (os.urandom(5000), 400, "not a valid zip"),
        (_zip(_manifest(), {"m.onnx": os.urandom(20000), "x.npy": x}), 400, "not a valid ONNX model"),
        (_zip(_manifest(member="m.pt", fmt="pytorch"), {"m.pt": b"\x80\x04pickle", "x.npy": x}), 400, "never pickled"),
        (_zip(_manifest(), {"m.onnx": model, "x.npy": b"\x93NUMPY garbage"}), 400, "not a valid .npy"),
        (_zip({**_manifest(), "version": 7}, {}), 400, "version"),
        (_zip(_manifest(fmt="mlpackage", member="p.mlpackage"),
              {"p.mlpackage/Manifest.json": b"{}", "p.mlpackage/../../evil": b"x", "x.npy": x}), 400, "unexpected file"),
        (_zip(_manifest(), {"m.onnx": model, "x.npy": _npy((1, 3, 9, 9))}), 422, "failed to run"),
    ]
    for body, status, message in cases:
        got, reply = _post(agent_url, body)
        assert got == status and message in reply["error"], (status, message, reply)
    # a model whose archive name is an absolute path is run from the agent's own file; nothing is written there
    evil = tmp_path / "pwned.onnx"
    got, reply = _post(agent_url, _zip(_manifest(member=str(evil)), {str(evil): model, "x.npy": x}))
    assert got == 200 and not evil.exists()
    # truncated: the headers promise more than the client sends before hanging up
    host, port = agent_url.removeprefix("http://").split(":")
    body = _zip(_manifest(), {"m.onnx": model, "x.npy": x})
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall((f"POST /v1/measure HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                   f"Content-Length: {len(body)}\r\n\r\n").encode() + body[: len(body) // 2])
    # no Content-Length at all
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.putrequest("POST", "/v1/measure")
    conn.putheader("Authorization", f"Bearer {TOKEN}")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    assert conn.getresponse().status == 411
    conn.close()
    assert _get(agent_url + "/v1/info")[0] == 200
    got, reply = _post(agent_url, body)
    assert got == 200 and reply["results"]["artifact"]["median_ms"] > 0


def test_one_measurement_at_a_time(agent_url, tiny_onnx):
    body = _zip(_manifest(), {"m.onnx": tiny_onnx.read_bytes(), "x.npy": _npy()})
    replies = []
    threads = [threading.Thread(target=lambda: replies.append(_post(agent_url, body))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert [status for status, _ in replies] == [200, 200, 200]
    spans = sorted((r["started"], r["finished"]) for _, r in replies)
    for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
        assert start >= end, "two measurements overlapped"
    assert max(r["queued_s"] for _, r in replies) > 0


def test_a_measurement_that_waits_past_the_queue_timeout_is_503(tiny_onnx):
    agent = Agent(AgentConfig(token=TOKEN, queue_timeout_s=0.2))
    body = pack_upload([UploadModel("artifact", "onnx", tiny_onnx)], [np.zeros((1, 3, 16, 16), np.float32)],
                       protocol=Protocol.quick())
    assert agent._measure_lock.acquire()  # a measurement in progress
    try:
        start = time.monotonic()
        with pytest.raises(RequestError) as err:
            agent.measure(body)
        assert err.value.status == 503 and time.monotonic() - start >= 0.2
    finally:
        agent._measure_lock.release()
    assert agent.measure(body)["results"]["artifact"]["runs"] > 0


def test_build_with_device_reports_the_agents_measurement(agent_url, tmp_path):
    out = tmp_path / "build"
    proc = run_cli("build", str(TINY), "--profile", "jetson-orin-nano", "--format", "onnx", "--device", agent_url,
                   "-o", str(out), "--json", env={"EDGEPRUNE_AGENT_TOKEN": TOKEN})
    assert proc.returncode == 0, proc.stderr
    lat = json.loads(proc.stdout)["latency"]
    _, info = _get(agent_url + "/v1/info")
    assert lat["source"] == "measured" and lat["device"] == info["device"] and lat["agent"] == agent_url
    assert lat["runs"] >= 3 and lat["median_ms"] > 0 and lat["runtime"].startswith("onnxruntime")
    # the estimate for the profile's device is always there, and its error against this measurement
    assert lat["estimated_ms"] > 0 and lat["estimate"]["profile"] == "jetson-orin-nano"
    assert lat["estimate_error"] == round(lat["estimated_ms"] / lat["median_ms"] - 1, 4)
    # the same artifact re-timed with bench through the agent, from the build folder
    proc = run_cli("bench", str(out), "--device", agent_url, "--quick", "--profile", "jetson-orin-nano", "--json",
                   env={"EDGEPRUNE_AGENT_TOKEN": TOKEN})
    assert proc.returncode == 0, proc.stderr
    bench = json.loads(proc.stdout)
    assert bench["device"] == info["device"] and bench["inputs"] == [[1, 3, 32, 32]]
    assert bench["estimated_ms"] == lat["estimated_ms"]
