"""Every network call ends: a server that trickles its answer, stalls the upload or never answers
cannot hold a build, a bench or an MLflow check past its deadline.

The servers here are real sockets on the loopback, each misbehaving one way. A call that did
not honour its deadline would not return at all; the tests bound each call with a thread join
far longer than the deadline, so a broken deadline fails the test instead of hanging the suite.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import pytest

from edgeprune import web
from edgeprune.errors import InputError
from edgeprune.measure.agent_client import AgentClient, AgentError

DEADLINE_S = 1.0
JOIN_S = 60.0  # a generous bound: only a call that ignores its deadline reaches it


@contextlib.contextmanager
def misbehaving(kind: str):
    """A loopback server that answers each connection as ``kind`` says; yields its URL."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn:
            try:
                if kind == "trickle":  # a large Content-Length, then a byte every half second
                    conn.recv(65536)
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n")
                    while not stop.is_set():
                        conn.sendall(b" ")
                        time.sleep(0.5)
                elif kind == "trickle-headers":  # the status line, then a header byte every half second
                    conn.recv(65536)
                    conn.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
                    while not stop.is_set():
                        conn.sendall(b"a")
                        time.sleep(0.5)
                elif kind == "stall-upload":  # reads nothing of the body, never answers
                    conn.recv(1024)
                    stop.wait()
                elif kind == "silent":  # accepts, reads the request, never answers
                    conn.recv(65536)
                    stop.wait()
                elif kind == "huge":  # announces 10 GB
                    conn.recv(65536)
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 10000000000\r\n\r\n{")
                    stop.wait()
            except OSError:
                pass

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        listener.close()


def _bounded(call):
    """Returns (the exception the call raised or None, whether it returned within JOIN_S)."""
    outcome: list = []

    def run() -> None:
        try:
            call()
            outcome.append(None)
        except Exception as exc:  # the refusal under test
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(JOIN_S)
    return (outcome[0] if outcome else None), bool(outcome)


@pytest.mark.parametrize("kind", ["trickle", "trickle-headers", "silent"])
def test_an_agent_that_trickles_or_never_answers_is_given_up_at_the_deadline(kind):
    with misbehaving(kind) as url:
        client = AgentClient(url, token="t" * 32, timeout_s=DEADLINE_S)
        exc, returned = _bounded(client.info)
    assert returned, f"the client was still waiting on a {kind} server after {JOIN_S} s"
    assert isinstance(exc, AgentError) and f"within {DEADLINE_S:g} s" in str(exc), exc


def test_an_agent_that_stops_reading_the_upload_is_given_up_at_the_deadline():
    body = b"x" * (64 << 20)  # far more than the socket buffers hold: the send blocks
    with misbehaving("stall-upload") as url:
        exc, returned = _bounded(lambda: web.request(url + "/upload", "POST", body, deadline_s=DEADLINE_S))
    assert returned
    assert isinstance(exc, web.WebError) and exc.kind == "deadline", exc


def test_an_answer_larger_than_allowed_is_not_read():
    with misbehaving("huge") as url:
        exc, returned = _bounded(lambda: web.request(url, deadline_s=30.0, max_reply_bytes=1 << 20))
    assert returned
    assert isinstance(exc, web.WebError) and exc.kind == "too-large", exc


def test_an_mlflow_server_that_never_answers_is_refused_at_its_deadline(monkeypatch):
    from edgeprune.report import mlflow_run

    monkeypatch.setattr(mlflow_run, "REACH_S", DEADLINE_S)
    with misbehaving("trickle") as url:
        exc, returned = _bounded(lambda: mlflow_run.check_tracking(url))
    assert returned
    assert isinstance(exc, InputError) and "no MLflow tracking server answers" in str(exc), exc


def test_a_well_behaved_server_is_read_whole():
    """The deadline cuts off only what misbehaves: a real agent's info comes back complete."""
    from conftest import start_agent

    proc, url = start_agent("deadline-token-0123456789abcdef")
    try:
        info = AgentClient(url, token="deadline-token-0123456789abcdef", timeout_s=30).info()
    finally:
        proc.terminate()
        proc.wait(10)
    assert info["protocol"] == 1 and info["device"]
