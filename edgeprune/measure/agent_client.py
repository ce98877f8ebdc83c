"""The client side of the device agent: upload artifacts, get the device's latency back."""

from __future__ import annotations

import http.client
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence

import numpy as np

from edgeprune.errors import InputError
from edgeprune.measure.agent_wire import API, TOKEN_ENV, pack_upload
from edgeprune.timing import Protocol
from edgeprune.uploads import UploadModel


class AgentError(InputError):
    """The agent could not be reached, refused the request, or could not measure (exit code 2)."""


class AgentClient:
    """Talks to one agent: ``info()`` and ``measure()``; every failure is an AgentError."""

    def __init__(self, url: str, token: str | None = None, timeout_s: float = 1800.0) -> None:
        parsed = urllib.parse.urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise AgentError(f"--device must be the agent's URL, like http://192.168.1.20:8765 (got {url!r})")
        self.url = url.rstrip("/")
        token = token if token is not None else os.environ.get(TOKEN_ENV, "")
        if not token:
            raise AgentError(f"{TOKEN_ENV} is not set: set it to the token the agent at {self.url} was started with")
        self._token = token
        self.timeout_s = timeout_s

    def _request(self, method: str, path: str, body: bytes | None = None, timeout: float | None = None) -> dict:
        headers = {"Authorization": f"Bearer {self._token}", "Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/zip"
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout_s) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raise self._http_error(exc) from None
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, (ConnectionResetError, BrokenPipeError)) and body is not None:
                raise AgentError(f"the agent at {self.url} closed the connection during the upload "
                                 "(is the artifact over its --max-upload-mb?)") from None
            if isinstance(reason, TimeoutError):
                raise AgentError(f"the agent at {self.url} did not answer within {timeout or self.timeout_s:g} s") from None
            raise AgentError(f"cannot reach the agent at {self.url}: {getattr(reason, 'strerror', None) or reason}; "
                             "is `edgeprune agent serve` running there?") from None
        except (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected):
            raise AgentError(f"the agent at {self.url} closed the connection"
                             + (" during the upload (is the artifact over its --max-upload-mb?)" if body else "")) from None
        except TimeoutError:
            raise AgentError(f"the agent at {self.url} did not answer within {timeout or self.timeout_s:g} s") from None
        except (http.client.HTTPException, OSError) as exc:
            raise AgentError(f"talking to the agent at {self.url} failed: {type(exc).__name__}: {exc}") from None
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise AgentError(f"{self.url} answered, but not as an edgeprune agent (no JSON)") from None
        if not isinstance(data, dict):
            raise AgentError(f"{self.url} answered, but not as an edgeprune agent")
        return data

    def _http_error(self, exc: urllib.error.HTTPError) -> AgentError:
        try:
            message = json.loads(exc.read()).get("error", "")
        except Exception:  # a proxy's HTML error page, or nothing at all
            message = ""
        message = message or exc.reason
        if exc.code == 401:
            return AgentError(f"the agent at {self.url} refused the token (HTTP 401): "
                              f"{TOKEN_ENV} must be the secret the agent was started with")
        if exc.code == 413:
            return AgentError(f"the agent at {self.url} refused the upload as too large (HTTP 413): {message}")
        if exc.code == 503:
            return AgentError(f"the agent at {self.url} is busy (HTTP 503): {message}")
        if exc.code == 404:
            return AgentError(f"{self.url} is not an edgeprune agent (HTTP 404 for {API})")
        return AgentError(f"the agent at {self.url} could not measure (HTTP {exc.code}): {message}")

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
