"""HTTP requests with an overall deadline, for every network call edgeprune makes (the device agent,
an MLflow server's health check).

A socket timeout bounds one read, not a request: a server that sends a large Content-Length and
then a byte every few seconds would hold a client for ever. Here a watchdog shuts the socket
down when the request's deadline passes, whatever phase it is in (connecting, uploading,
waiting for the answer, reading it), and a reply larger than the caller allows is cut off.
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
import urllib.parse
from dataclasses import dataclass

from edgeprune.errors import InputError

CHUNK = 1 << 16


class WebError(Exception):
    """The request got no complete answer; ``why`` says how (unreachable, closed, past its deadline, too large)."""

    def __init__(self, why: str, kind: str) -> None:
        super().__init__(why)
        self.kind = kind  # "unreachable", "closed", "deadline", "too-large"


@dataclass(frozen=True)
class Reply:
    status: int
    reason: str
    body: bytes


def parse_url(url: str) -> urllib.parse.SplitResult:
    """Returns the parts of an http(s) URL with a host; ValueError saying what is wrong with any other."""
    text = str(url)
    if any(c.isspace() for c in text):
        raise ValueError("a URL holds no spaces")
    try:
        parts = urllib.parse.urlsplit(text)
        port = parts.port  # ValueError when out of range or not a number
    except ValueError as exc:
        raise ValueError(str(exc)) from None
    if parts.scheme not in ("http", "https"):
        raise ValueError("it must start with http:// or https://")
    if not parts.hostname:
        raise ValueError("it names no host")
    if port == 0:
        raise ValueError("port 0 is not a port a server listens on")
    return parts


def agent_url(url: str) -> str:
    """Returns a device agent's URL without a trailing slash; InputError for anything but http(s)://HOST[:PORT]."""
    try:
        parse_url(url)
    except ValueError as exc:
        raise InputError(f"--device must be the agent's URL, like http://192.168.1.20:8765 ({exc}; got {url!r})"
                         ) from None
    return url.rstrip("/")


def request(url: str, method: str = "GET", body: bytes | None = None, headers: dict[str, str] | None = None,
            deadline_s: float = 30.0, max_reply_bytes: int = 16 << 20) -> Reply:
    """Returns the server's reply to one request, complete within ``deadline_s`` seconds or WebError."""
    parts = parse_url(url)
    cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = cls(parts.hostname, parts.port, timeout=deadline_s)
    fired = threading.Event()

    def cut() -> None:
        fired.set()
        sock = conn.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # a blocked send or recv returns at once
            except OSError:
                pass

    watchdog = threading.Timer(deadline_s, cut)
    watchdog.daemon = True
    watchdog.start()
    start = time.monotonic()
    try:
        reply = _exchange(conn, parts, method, body, headers or {}, max_reply_bytes)
        if fired.is_set():  # an answer without a length, cut off by the watchdog
            raise WebError(f"no complete answer within {deadline_s:g} s", "deadline")
        return reply
    except WebError:
        raise
    except (OSError, http.client.HTTPException) as exc:
        if fired.is_set() or isinstance(exc, TimeoutError):
            raise WebError(f"no complete answer within {deadline_s:g} s", "deadline") from None
        if isinstance(exc, (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected,
                            http.client.IncompleteRead)):
            raise WebError(f"the server closed the connection after {time.monotonic() - start:.1f} s", "closed") from None
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise WebError(reason, "unreachable") from None
    finally:
        watchdog.cancel()
        conn.close()


def _exchange(conn: http.client.HTTPConnection, parts: urllib.parse.SplitResult, method: str, body: bytes | None,
              headers: dict[str, str], max_reply_bytes: int) -> Reply:
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    conn.putrequest(method, path, skip_accept_encoding=True)
    for key, value in headers.items():
        conn.putheader(key, value)
    if body is not None:
        conn.putheader("Content-Length", str(len(body)))
    conn.endheaders()
    try:
        view = memoryview(body or b"")
        for i in range(0, len(view), CHUNK):
            conn.send(view[i:i + CHUNK])
    except (BrokenPipeError, ConnectionResetError):
        try:  # a server that refuses an upload answers first (413) and then stops reading
            response = conn.getresponse()
        except (OSError, http.client.HTTPException):
            raise BrokenPipeError from None
    else:
        response = conn.getresponse()
    declared = response.getheader("Content-Length")
    if declared and declared.isdigit() and int(declared) > max_reply_bytes:
        raise WebError(f"the server announced a {int(declared) / 1e6:.0f} MB answer; at most "
                       f"{max_reply_bytes / 1e6:.0f} MB is read", "too-large")
    chunks, size = [], 0
    while True:
        chunk = response.read1(CHUNK)
        if not chunk:
            break
        size += len(chunk)
        if size > max_reply_bytes:
            raise WebError(f"the answer passed {max_reply_bytes / 1e6:.0f} MB", "too-large")
        chunks.append(chunk)
    if declared and declared.isdigit() and size < int(declared):
        raise http.client.IncompleteRead(b"".join(chunks), int(declared) - size)
    return Reply(response.status, response.reason, b"".join(chunks))
