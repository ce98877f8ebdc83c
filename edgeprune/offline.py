"""Loading a library's model with the network closed: nothing is downloaded.

timm, torchvision and transformers fetch weights from their hubs when the weights are not
cached, and edgeprune promises that a build downloads nothing. While a model argument
(``hf:``, ``timm:``, ``torchvision:``) loads, the hubs' offline switches are on (huggingface_hub
reads its switch when it is first imported, so its constant is set too where it already was),
proxies are unset, and this process opens no connection to any address, looks up no name:
a library
without an offline switch (torchvision's download of weights) fails at once instead of
retrying for a minute, and no request leaves the machine.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import sys
from collections.abc import Iterator

SWITCHES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
# a proxy on this machine would carry a request out: unset while the network is closed
PROXIES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")
REFUSED = "edgeprune loads models with the network closed (nothing is downloaded)"


@contextlib.contextmanager
def no_network() -> Iterator[None]:
    """Within the block, hubs are offline and no connection to any address (a proxy on the loopback
    included: an opener built before the block may hold one) nor any name lookup is made."""
    saved_env = {k: os.environ.get(k) for k in (*SWITCHES, *PROXIES)}
    os.environ.update({k: "1" for k in SWITCHES})
    for key in PROXIES:
        os.environ.pop(key, None)
    hub = sys.modules.get("huggingface_hub.constants")
    saved_hub = getattr(hub, "HF_HUB_OFFLINE", None)
    if hub is not None:
        hub.HF_HUB_OFFLINE = True
    connect, connect_ex, getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo

    def guarded_connect(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            raise OSError(errno.ENETUNREACH, REFUSED)
        return connect(sock, address)

    def guarded_connect_ex(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            return errno.ENETUNREACH
        return connect_ex(sock, address)

    def guarded_getaddrinfo(host, *args, **kwargs):
        if host is not None:
            raise socket.gaierror(socket.EAI_NONAME, REFUSED)  # no name lookup either
        return getaddrinfo(host, *args, **kwargs)

    socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = (
        guarded_connect, guarded_connect_ex, guarded_getaddrinfo)
    try:
        yield
    finally:
        socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = connect, connect_ex, getaddrinfo
        if hub is not None:
            hub.HF_HUB_OFFLINE = saved_hub
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
