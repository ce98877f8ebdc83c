"""The agent against hostile and careless clients: a fuzz of malformed requests, slow uploads, many clients."""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import socket
import threading
import time
import urllib.error
import urllib.request
import zipfile

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeprune.device.server import AgentConfig, make_server
from edgeprune.host import this_host

TOKEN = "hostile-token-0123456789abcdef"
QUICK = {"warmup_s": 0.01, "round_s": 0.02, "min_rounds": 2, "max_rounds": 3}


@contextlib.contextmanager
def _serving(max_pending: int):
    """An agent served from this process on a free loopback port, with a short read deadline."""
    server = make_server("127.0.0.1", 0, AgentConfig(token=TOKEN, max_upload_bytes=1 << 20, read_timeout_s=2.0,
                                                      queue_timeout_s=60, max_pending=max_pending))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield server.server_address[:2]
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def agent():
    with _serving(max_pending=8) as address:
        yield address


def _model(width: int = 4, extra=None, inits=None) -> bytes:
    rng = np.random.default_rng(width)
    nodes = [helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("Gemm", ["f", "w"], ["y"], transB=1)]
    weights = [numpy_helper.from_array(rng.standard_normal((width, 12)).astype(np.float32), "w")]
    graph = helper.make_graph(nodes + (extra or []), "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 2, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, width])], weights + (inits or []))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def _external_tensor(name: str) -> TensorProto:
    t = numpy_helper.from_array(np.zeros(4, np.float32), name)
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    t.external_data.add(key="location", value="/etc/passwd")
    return t


def _npy(shape=(1, 3, 2, 2)) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.zeros(shape, np.float32))
    return buf.getvalue()


def _upload(model: bytes, npy: bytes | None = None, role: str = "artifact", **manifest) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("m.onnx", model)
        zf.writestr("x.npy", npy if npy is not None else _npy())
        zf.writestr("manifest.json", json.dumps({"version": 1, "inputs": ["x.npy"], "protocol": QUICK,
                                                 "models": [{"role": role, "format": "onnx", "member": "m.onnx"}],
                                                 **manifest}))
    return buf.getvalue()


def _raw(agent, head: str, body: bytes = b"", timeout: float = 10.0) -> int:
    """Sends a hand-made request and returns the status code (0 when the agent just closed)."""
    with socket.create_connection(agent, timeout=timeout) as s:
        s.sendall(head.encode() + body)
        data = b""
        try:
            while b"\r\n" not in data:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        except (ConnectionError, TimeoutError):
            return 0
    line = data.split(b"\r\n", 1)[0].split()
    return int(line[1]) if len(line) > 1 and line[1].isdigit() else 0


def _post(agent, body: bytes, token: str = TOKEN, timeout: float = 60.0) -> tuple[int, dict]:
    req = urllib.request.Request(f"http://{agent[0]}:{agent[1]}/v1/measure", data=body, method="POST",
                                 headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def _head(length: int | str, token: str | None = TOKEN, extra: str = "") -> str:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return f"POST /v1/measure HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: {length}\r\n{extra}\r\n"


def _malformed(rng: random.Random) -> list[tuple[str, object]]:
    """Returns (kind, request) pairs: a raw request (head, body) or an upload to POST."""
    good = _upload(_model())
    cases: list[tuple[str, object]] = []
    for _ in range(81):
        cases.append(("random body", os.urandom(rng.randint(1, 4000))))
    for _ in range(60):
        damaged = bytearray(good)
        for _ in range(rng.randint(1, 8)):
            damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        cases.append(("damaged archive", bytes(damaged)))
    for _ in range(30):
        cases.append(("truncated archive", good[: rng.randint(1, len(good) - 1)]))
    for _ in range(25):
        cases.append(("wrong token", ("raw", _head(len(good), token="x" * rng.randint(0, 40)), good)))
    for _ in range(15):
        cases.append(("no token", ("raw", _head(len(good), token=None), good)))
    for _ in range(15):
        cases.append(("two Content-Length", ("raw", _head(len(good), extra=f"Content-Length: {len(good)}\r\n"), good)))
    for _ in range(15):
        cases.append(("Content-Length not a number", ("raw", _head(rng.choice(["ten", "-5", "1e3", ""])), b"")))
    for _ in range(4):  # each waits out the read deadline: the agent drains a refused body so the client sees 413
        cases.append(("oversize", ("raw", _head((1 << 20) + rng.randint(1, 1 << 20)), b"")))
    externals = {
        "external initializer": _model(inits=[_external_tensor("e")],
                                       extra=[helper.make_node("Identity", ["e"], ["e2"])]),
        "external Constant": _model(extra=[helper.make_node("Constant", [], ["c"], value=_external_tensor("v"))]),
        "external in a subgraph": _model(extra=[helper.make_node(
            "If", ["cond"], ["o"], then_branch=helper.make_graph([], "t", [], [helper.make_tensor_value_info(
                "e", TensorProto.FLOAT, [4])], [_external_tensor("e")]),
            else_branch=helper.make_graph([], "e", [], [helper.make_tensor_value_info("e", TensorProto.FLOAT, [4])],
                                          [_external_tensor("e")]))]),
    }
    for kind, model in externals.items():
        cases += [(kind, _upload(model))] * 10
    huge = _npy().replace(b"(1, 3, 2, 2)", b"(999999, 999999, 999)".ljust(12)[:12])
    cases += [("huge .npy shape", _upload(_model(), npy=_npy().replace(b"'shape': (1, 3, 2, 2)",
                                                                     b"'shape': (99999, 99999, 9999)")))] * 10
    cases += [("huge .npy shape, short", _upload(_model(), npy=huge))] * 5
    cases += [("pickled .npy", _upload(_model(), npy=b"\x93NUMPY\x01\x00v\x00{'descr': '|O', 'fortran_order': False, "
                                                    b"'shape': (1,), }" + b" " * 40 + b"\n\x80\x04N."))] * 5
    cases += [("threads below one", _upload(_model(), threads=0))] * 5
    cases += [("version 2", _upload(_model(), version=2))] * 5
    return cases


def test_a_fuzz_of_malformed_requests_leaves_the_agent_alive_and_correct(agent):
    cases = _malformed(random.Random(0))
    assert len(cases) >= 300
    seen: dict[str, set[int]] = {}
    for kind, request in cases:
        if isinstance(request, tuple):
            status = _raw(agent, request[1], request[2])
        else:
            status = _post(agent, request)[0]
        seen.setdefault(kind, set()).add(status)
        assert status != 500, kind
    refused = {400, 401, 411, 413}
    for kind, statuses in seen.items():
        if kind in ("random body", "damaged archive", "truncated archive"):
            assert statuses <= refused | {0, 200, 422}, (kind, statuses)  # a harmless byte flip may still run
        else:
            assert statuses <= refused | {0}, (kind, statuses)
    assert seen["wrong token"] | seen["no token"] <= {401, 0}
    assert seen["two Content-Length"] == {400} and seen["oversize"] <= {413, 0}
    status, reply = _post(agent, _upload(_model()))
    assert status == 200 and reply["results"]["artifact"]["median_ms"] > 0


def test_a_client_cannot_ask_for_more_threads_than_the_device_has(agent):
    status, reply = _post(agent, _upload(_model(), threads=1024))
    assert status == 200 and reply["threads"] == this_host().cores


def test_slow_uploads_do_not_stop_a_well_behaved_client():
    # fewer waiting slots than slow clients: a slot is taken only once an upload is whole
    with _serving(max_pending=4) as agent:
        good = _upload(_model())
        slow = []
        for _ in range(6):
            s = socket.create_connection(agent, timeout=30)
            s.sendall(_head(len(good)).encode() + good[:10])  # then nothing: a client that stalls mid-upload
            slow.append(s)
        try:
            time.sleep(0.3)  # the stalled uploads are all being read
            status, reply = _post(agent, good, timeout=30)
            assert status == 200 and reply["results"]["artifact"]["runs"] > 0
            # answered while every stalled upload still holds its connection open (none was given up on)
            for s in slow:
                s.setblocking(False)
                try:
                    assert s.recv(1) != b"", "the agent closed a stalled upload before serving the good client"
                except BlockingIOError:
                    pass  # open, nothing sent: still waiting for the rest of the upload
                finally:
                    s.setblocking(True)
        finally:
            for s in slow:
                s.close()


def test_eight_clients_at_once_each_get_their_own_result(agent):
    replies: dict[int, tuple[int, dict]] = {}

    def client(i: int) -> None:
        replies[i] = _post(agent, _upload(_model(width=4 + i), role=f"client-{i}"), timeout=120)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    assert sorted(replies) == list(range(8))
    for i, (status, reply) in replies.items():
        assert status == 200, reply
        assert list(reply["results"]) == [f"client-{i}"] and reply["results"][f"client-{i}"]["runs"] > 0
