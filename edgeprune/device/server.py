"""The device agent: an HTTP server on the device that times uploaded artifacts.

Protocol (version 1), every request but /v1/health carrying ``Authorization: Bearer TOKEN``:

- ``GET /v1/health``: ``{"ok": true}``, for liveness checks; says nothing about the device.
- ``GET /v1/info``: device description, runtimes and versions, formats, limits.
- ``POST /v1/measure``: a zip archive (``Content-Length`` required) holding ``manifest.json``,
  the models it names, and the inputs as ``.npy`` files. The reply is the latency
  statistics of every model, timed side by side on this device, and the device description.
  Decoders (an LLM's ``model.onnx``, ``model.onnx.data`` and ``genai_config.json``) come with
  a ``generation`` request instead of inputs: the agent runs its own generation loop on each
  (agent_decoder) and replies with tokens per second, TTFT, decode latency and peak RSS.

Limits: a wrong or missing token is 401 (compared in constant time); a body over the upload
limit is 413; a malformed, truncated or unsupported upload is 400; a model the runtime
cannot run is 422; a measurement that waited longer than the queue timeout is 503. One
measurement runs at a time so measurements do not disturb each other. Names inside the
archive are only looked up, never used as paths: the agent writes what it runs under names
of its own, and loads only ONNX, Core ML packages and TensorRT engines (never pickles).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from edgeprune import __version__
from edgeprune.device import runtimes
from edgeprune.device.decoders import run_generation
from edgeprune.device.local import time_models
from edgeprune.device.wire import (
    API,
    MIN_TOKEN_LENGTH,
    RUNTIMES,
    TOKEN_ENV,
    Job,
    RequestError,
    parse_upload,
    write_model,
)
from edgeprune.errors import InputError
from edgeprune.host import this_host


@dataclass(frozen=True)
class AgentConfig:
    """How the agent runs: its secret, limits and the device it describes."""

    token: str
    max_upload_bytes: int = 512 * 1024 * 1024
    queue_timeout_s: float = 600.0
    read_timeout_s: float = 60.0
    threads: int | None = None
    name: str | None = None
    max_pending: int = 8

    def __post_init__(self) -> None:
        if len(self.token) < MIN_TOKEN_LENGTH:
            raise InputError(f"the agent token must be at least {MIN_TOKEN_LENGTH} characters; "
                             f"set {TOKEN_ENV} to a long random secret on both sides")


def token_from_env() -> str:
    """Returns the shared secret from EDGEPRUNE_AGENT_TOKEN; InputError if it is not set."""
    token = os.environ.get(TOKEN_ENV, "")
    if not token:
        raise InputError(f"{TOKEN_ENV} is not set: set it to the same shared secret on the device and on "
                         "the machine that builds (e.g. `export EDGEPRUNE_AGENT_TOKEN=$(openssl rand -hex 24)`)")
    return token


class Agent:
    """The agent's state: configuration, the measurement lock, counters, last activity."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.device = runtimes.device_description(config.name)
        self.hardware = runtimes.device_description()  # the device without the name it was given
        self.runtimes = runtimes.available_runtimes()
        self._measure_lock = threading.Lock()
        self.pending = threading.BoundedSemaphore(config.max_pending)
        self._count_lock = threading.Lock()
        self.in_flight = 0
        self.last_activity = time.monotonic()
        self.measurements = 0
        self.queued = 0  # measurements waiting for the device or running on it

    def touch(self, delta: int) -> None:
        """Counts a request in (+1) or out (-1); the idle timer runs only with none in flight."""
        with self._count_lock:
            self.in_flight += delta
            self.last_activity = time.monotonic()

    def idle_for(self) -> float:
        """Returns seconds since the last request ended, 0 while one is in flight."""
        with self._count_lock:
            return 0.0 if self.in_flight else time.monotonic() - self.last_activity

    # ------------------------------------------------------------------ requests
    def authorized(self, header: str | None) -> bool:
        """Returns whether an Authorization header carries the token (constant-time compare)."""
        scheme, _, given = (header or "").partition(" ")
        # Hashing first gives compare_digest equal lengths: the time taken reveals neither
        # how much of the token matched nor how long it is.
        ok = hmac.compare_digest(hashlib.sha256(given.strip().encode()).digest(),
                                 hashlib.sha256(self.config.token.encode()).digest())
        return ok and scheme.lower() == "bearer"

    def info(self) -> dict:
        """Returns what a client needs to know before uploading."""
        return {
            "agent": f"edgeprune {__version__}",
            "protocol": 1,
            "device": self.device,
            "hardware": self.hardware,
            "runtimes": self.runtimes,
            "formats": {fmt: [r for r in rts if r in self.runtimes] for fmt, rts in RUNTIMES.items()},
            "max_upload_bytes": self.config.max_upload_bytes,
            "queue_timeout_s": self.config.queue_timeout_s,
            "threads": self.config.threads or this_host().cores,
            "queue": self.queued,
            "measurements": self.measurements,
        }

    def measure(self, body: bytes) -> dict:
        """Returns the latency statistics of the models in an uploaded archive."""
        return self.run_job(parse_upload(body, self.config.max_upload_bytes))

    def run_job(self, job: Job) -> dict:
        """Returns the latency statistics of a parsed upload, timed when the device is free."""
        waited = time.monotonic()
        with self._count_lock:
            self.queued += 1
        try:
            return self._when_free(job, waited)
        finally:
            with self._count_lock:
                self.queued -= 1

    def _when_free(self, job: Job, waited: float) -> dict:
        if not self._measure_lock.acquire(timeout=self.config.queue_timeout_s):
            raise RequestError(HTTPStatus.SERVICE_UNAVAILABLE,
                               f"the device is busy: another measurement held it for over {self.config.queue_timeout_s:g} s",
                               {"Retry-After": "30"})
        try:
            queued = time.monotonic() - waited
            started = time.time()
            result = self._run(job)
            self.measurements += 1
            return {**result, "queued_s": round(queued, 3), "started": started, "finished": time.time()}
        finally:
            self._measure_lock.release()

    def _run(self, job: Job) -> dict:
        cores = self.config.threads or this_host().cores
        threads = min(job.threads or cores, cores)  # a client cannot start more threads than the device has
        if job.generation is not None:
            return self._generate(job, threads)
        with tempfile.TemporaryDirectory(prefix="edgeprune-agent-") as tmp:
            models = []
            for i, model in enumerate(job.models):
                path = write_model(Path(tmp) / f"m{i}", model)
                if model.runtime not in self.runtimes:
                    raise RequestError(HTTPStatus.UNPROCESSABLE_ENTITY,
                                       f"runtime {model.runtime} is not available on this device "
                                       f"(available: {', '.join(self.runtimes)})")
                models.append((model.role, path, model.format, model.runtime, model.precision))
            try:
                results, seconds = time_models(models, job.inputs, threads, job.protocol)
            except runtimes.BadArtifact as exc:
                raise RequestError(HTTPStatus.BAD_REQUEST, str(exc)) from None
            except runtimes.RuntimeFailure as exc:
                raise RequestError(HTTPStatus.UNPROCESSABLE_ENTITY, str(exc)) from None
        return {"device": self.device, "threads": threads, "seconds": round(seconds, 3), "results": results}

    def _generate(self, job: Job, threads: int) -> dict:
        """Returns the generation figures of uploaded decoders, each run by the agent's own loop."""
        if "onnxruntime" not in self.runtimes:
            raise RequestError(HTTPStatus.UNPROCESSABLE_ENTITY, "onnxruntime is not available on this device")
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="edgeprune-agent-") as tmp:
            folders = {m.role: write_model(Path(tmp) / f"m{i}", m) for i, m in enumerate(job.models)}
            try:
                figures = run_generation(folders, job.generation, threads)
            except RuntimeError as exc:
                raise RequestError(HTTPStatus.UNPROCESSABLE_ENTITY, str(exc)) from None
        return {"device": self.device, "threads": threads, "seconds": round(time.perf_counter() - start, 3),
                "results": figures}


class _Handler(BaseHTTPRequestHandler):
    server_version = f"edgeprune-agent/{__version__}"
    protocol_version = "HTTP/1.1"
    agent: Agent  # set on the subclass the server builds

    def setup(self) -> None:
        # A client that stops sending mid-upload must not hold a thread forever.
        self.timeout = self.agent.config.read_timeout_s
        super().setup()

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (the base class's name)
        sys.stderr.write(f"edgeprune agent: {self.address_string()} {format % args}\n")

    def _reply(self, status: int, payload: dict, headers: dict[str, str] | None = None, close: bool = False) -> None:
        body = (json.dumps(payload) + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        try:
            self.wfile.write(body)
        except OSError:  # the client went away; nothing to tell it
            self.close_connection = True

    def _error(self, exc: RequestError, close: bool = False) -> None:
        self._reply(exc.status, {"error": str(exc), "status": exc.status}, exc.headers, close)

    def _authorize(self) -> bool:
        if self.agent.authorized(self.headers.get("Authorization")):
            return True
        if self.command == "POST":
            self._drain(self._length() or 0, 1 << 20)  # a little, so a small upload sees the 401
        self._error(RequestError(HTTPStatus.UNAUTHORIZED, f"missing or wrong token (set {TOKEN_ENV})",
                                 {"WWW-Authenticate": 'Bearer realm="edgeprune-agent"'}), close=True)
        return False

    def _length(self) -> int | None:
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            return None
        return length if length >= 0 else None

    def do_GET(self) -> None:  # noqa: N802 (the base class's name)
        self.agent.touch(+1)
        try:
            self._get()
        finally:
            self.agent.touch(-1)

    def _get(self) -> None:
        if self.path == f"{API}/health":
            self._reply(HTTPStatus.OK, {"ok": True})
        elif self.path == f"{API}/info":
            if self._authorize():
                self._reply(HTTPStatus.OK, self.agent.info())
        else:
            self._error(RequestError(HTTPStatus.NOT_FOUND, f"no such endpoint; see {API}/info"))

    def do_POST(self) -> None:  # noqa: N802
        self.agent.touch(+1)
        try:
            self._post()
        finally:
            self.agent.touch(-1)

    def _post(self) -> None:
        if self.path != f"{API}/measure":
            self._error(RequestError(HTTPStatus.NOT_FOUND, f"no such endpoint; POST {API}/measure"), close=True)
            return
        if not self._authorize():
            return
        try:
            body = self._body()  # read whole, under a deadline, before it may take a slot
            if body is None:
                return
            job = parse_upload(body, self.agent.config.max_upload_bytes)
        except RequestError as exc:
            self._error(exc, close=True)
            return
        except (ConnectionError, TimeoutError, OSError):
            self.close_connection = True
            return
        except Exception as exc:  # a parser bug must still answer, and keep the agent serving
            self._error(RequestError(HTTPStatus.INTERNAL_SERVER_ERROR,
                                     f"internal error: {type(exc).__name__}: {str(exc)[:200]}"), close=True)
            return
        if not self.agent.pending.acquire(blocking=False):
            self._error(RequestError(HTTPStatus.SERVICE_UNAVAILABLE, "too many requests waiting; retry later",
                                     {"Retry-After": "30"}), close=True)
            return
        try:
            self._reply(HTTPStatus.OK, self.agent.run_job(job))
        except RequestError as exc:
            self._error(exc, close=True)
        except (ConnectionError, TimeoutError):
            self.close_connection = True
        except Exception as exc:  # keep serving whatever an upload did to one request
            self._error(RequestError(HTTPStatus.INTERNAL_SERVER_ERROR,
                                     f"internal error: {type(exc).__name__}: {str(exc)[:200]}"), close=True)
        finally:
            self.agent.pending.release()

    def _body(self) -> bytes | None:
        """Returns the request body, or None after answering 411/413/400 for a bad one."""
        limit = self.agent.config.max_upload_bytes
        if len(self.headers.get_all("Content-Length") or []) > 1:
            self._error(RequestError(HTTPStatus.BAD_REQUEST, "more than one Content-Length header"), close=True)
            return None
        if self.headers.get("Transfer-Encoding") or self.headers.get("Content-Length") is None:
            self._error(RequestError(HTTPStatus.LENGTH_REQUIRED, "send the upload with a Content-Length"), close=True)
            return None
        length = self._length()
        if length is None:
            self._error(RequestError(HTTPStatus.BAD_REQUEST, "Content-Length is not a number"), close=True)
            return None
        if length > limit:
            self._drain(length, limit)
            self._error(RequestError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                                     f"upload of {length} bytes is over this agent's limit of {limit} bytes "
                                     "(agent serve --max-upload-mb)"), close=True)
            return None
        chunks, left = [], length
        deadline = time.monotonic() + self.agent.config.read_timeout_s
        while left:
            if time.monotonic() > deadline:  # a slow client gets the read timeout for the whole body, not per chunk
                raise RequestError(HTTPStatus.REQUEST_TIMEOUT,
                                   f"the upload took longer than {self.agent.config.read_timeout_s:g} s")
            chunk = self.rfile.read(min(left, 1 << 16))
            if not chunk:
                raise RequestError(HTTPStatus.BAD_REQUEST, f"the upload was truncated ({length - left} of {length} bytes)")
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def _drain(self, length: int, limit: int) -> None:
        """Reads and drops a refused body (up to a bound) so the client can read the 413."""
        left = min(length, 4 * limit + (8 << 20))
        try:
            while left > 0:
                chunk = self.rfile.read(min(left, 1 << 20))
                if not chunk:
                    return
                left -= len(chunk)
        except (ConnectionError, TimeoutError):
            return


class AgentServer(ThreadingHTTPServer):
    """The HTTP server of one agent; ``serve(idle_exit_s)`` runs it."""

    daemon_threads = True

    def __init__(self, host: str, port: int, agent: Agent) -> None:
        handler = type("Handler", (_Handler,), {"agent": agent})
        self.agent = agent
        super().__init__((host, port), handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def serve(self, idle_exit_s: float = 0.0) -> None:
        """Serves until interrupted, or until no request came for ``idle_exit_s`` (if > 0)."""
        if idle_exit_s > 0:
            def watch() -> None:
                while True:
                    time.sleep(min(1.0, idle_exit_s / 4))
                    if self.agent.idle_for() > idle_exit_s:
                        self.shutdown()
                        return

            threading.Thread(target=watch, daemon=True).start()
        try:
            self.serve_forever(poll_interval=0.2)
        finally:
            self.server_close()


def make_server(host: str, port: int, config: AgentConfig) -> AgentServer:
    """Returns a bound (not yet serving) agent server; InputError if the address is unusable."""
    try:
        return AgentServer(host, port, Agent(config))
    except OSError as exc:
        raise InputError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
