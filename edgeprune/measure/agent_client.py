"""The client side of the device agent: upload artifacts, get the device's latency back."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import numpy as np

from edgeprune import web
from edgeprune.device.wire import API, TOKEN_ENV, pack_upload
from edgeprune.errors import InputError
from edgeprune.timing import Protocol
from edgeprune.uploads import UploadModel
from edgeprune.web import agent_url


class AgentError(InputError):
    """The agent could not be reached, refused the request, or could not measure (exit code 2).

    ``kind`` says whether another agent may do the job: "unreachable" (no answer, the connection
    lost or the deadline passed: the agent is down), "busy" (its queue is full), or "refused"
    (it answered that the request or the model is wrong: another agent would answer the same).
    """

    def __init__(self, message: str, kind: str = "refused") -> None:
        super().__init__(message)
        self.kind = kind


class AgentClient:
    """Talks to one agent: ``info()`` and ``measure()``; every failure is an AgentError."""

    def __init__(self, url: str, token: str | None = None, timeout_s: float = 1800.0) -> None:
        self.url = agent_url(url)
        token = token if token is not None else os.environ.get(TOKEN_ENV, "")
        if not token:
            raise AgentError(f"{TOKEN_ENV} is not set: set it to the token the agent at {self.url} was started with")
        self._token = token
        self.timeout_s = timeout_s
        self._identity: list | None = None

    def _request(self, method: str, path: str, body: bytes | None = None, timeout: float | None = None) -> dict:
        """Returns the agent's JSON answer; the whole request (upload, measurement, answer) ends within
        ``timeout`` (default the client's ``timeout_s``) seconds."""
        headers = {"Authorization": f"Bearer {self._token}", "Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/zip"
        deadline = timeout or self.timeout_s
        try:
            reply = web.request(self.url + path, method, body, headers, deadline_s=deadline)
        except web.WebError as exc:
            if exc.kind == "deadline":
                raise AgentError(f"the agent at {self.url} did not answer within {deadline:g} s", "unreachable") from None
            if exc.kind == "closed":
                raise AgentError(f"the agent at {self.url} closed the connection"
                                 + (" during the upload (is the artifact over its --max-upload-mb?)" if body else ""),
                                 "unreachable") from None
            if exc.kind == "too-large":
                raise AgentError(f"{self.url} answered, but not as an edgeprune agent: {exc}") from None
            raise AgentError(f"cannot reach the agent at {self.url}: {exc}; "
                             "is `edgeprune agent serve` running there?", "unreachable") from None
        if reply.status >= 400:
            raise self._http_error(reply)
        try:
            data = json.loads(reply.body)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            raise AgentError(f"{self.url} answered, but not as an edgeprune agent (no JSON)") from None
        if not isinstance(data, dict):
            raise AgentError(f"{self.url} answered, but not as an edgeprune agent")
        return data

    def _http_error(self, reply: web.Reply) -> AgentError:
        try:
            message = json.loads(reply.body).get("error", "")
        except Exception:  # a proxy's HTML error page, or nothing at all
            message = ""
        message = message or reply.reason
        if reply.status == 401:
            return AgentError(f"the agent at {self.url} refused the token (HTTP 401): "
                              f"{TOKEN_ENV} must be the secret the agent was started with")
        if reply.status == 413:
            return AgentError(f"the agent at {self.url} refused the upload as too large (HTTP 413): {message}")
        if reply.status == 503:
            return AgentError(f"the agent at {self.url} is busy (HTTP 503): {message}", "busy")
        if reply.status == 404:
            return AgentError(f"{self.url} is not an edgeprune agent (HTTP 404 for {API})")
        return AgentError(f"the agent at {self.url} could not measure (HTTP {reply.status}): {message}")

    def measure_generation(self, models: Sequence[UploadModel], prompt: int, gen: int, repeats: int = 1,
                           threads: int | None = None) -> dict:
        """Returns the agent's generation figures of decoders (``results[role]``: pp/tg tokens per second, TTFT,
        decode latency, peak RSS), each run by the agent's own loop in a process of its own."""
        info = self.info()
        if "decoder" not in info.get("formats", {}) or not info["formats"]["decoder"]:
            raise AgentError(f"the agent at {self.url} ({info['device']}) does not run decoders "
                             f"(its runtimes: {', '.join(info.get('runtimes', {}))})")
        body = pack_upload(models, [], threads, generation={"prompt": prompt, "gen": gen, "repeats": repeats})
        reply = self._request("POST", f"{API}/measure", body)
        results = reply.get("results")
        if not isinstance(results, dict) or any(m.role not in results for m in models):
            raise AgentError(f"the agent at {self.url} sent a reply without results for every decoder")
        reply["agent"] = self.url
        return reply

    def identity(self) -> list:
        """Returns what decides the agent's measurements (its hardware, threads and runtimes' versions), not
        where it is or what it is called: two agents on identical devices measure alike, so a candidate
        measured on one serves both."""
        if self._identity is None:
            info = self.info()
            self._identity = [info.get("hardware", info.get("device")), info.get("threads"),
                              sorted((info.get("runtimes") or {}).items())]
        return self._identity

    def info(self) -> dict:
        """Returns the agent's description of its device, runtimes and limits."""
        data = self._request("GET", f"{API}/info", timeout=min(self.timeout_s, 30.0))
        if data.get("protocol") != 1 or "device" not in data:
            raise AgentError(f"{self.url} is not an edgeprune agent speaking protocol 1")
        return data

    def measure(self, models: Sequence[UploadModel], inputs: Sequence[np.ndarray], threads: int | None = None,
                protocol: Protocol | None = None) -> dict:
        """Returns the agent's reply: ``device``, ``results[role]`` latency statistics, timings.

        The token and the agent are checked with ``info()`` first, so a wrong token fails
        fast instead of after a large upload.
        """
        info = self.info()
        for model in models:
            if model.format not in info.get("formats", {}) or not info["formats"][model.format]:
                raise AgentError(f"the agent at {self.url} ({info['device']}) cannot run {model.format} "
                                 f"artifacts (its runtimes: {', '.join(info.get('runtimes', {}))})")
        body = pack_upload(models, inputs, threads, protocol)
        reply = self._request("POST", f"{API}/measure", body)
        results = reply.get("results")
        if not isinstance(results, dict) or any(m.role not in results for m in models):
            raise AgentError(f"the agent at {self.url} sent a reply without results for every model")
        reply["agent"] = self.url
        reply["agent_version"] = info.get("agent")
        return reply
