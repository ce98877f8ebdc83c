"""Nothing is downloaded: models one argument away load with the network closed.

A user's proxy on the loopback sees every request a library would send; each command runs
in a fresh interpreter (the hubs read their offline switches when first imported) with empty
caches, and the proxy must see no connection at all. The timm: and torchvision: cases are in
test_model_specs.py, which runs where those libraries import.
"""

from __future__ import annotations

import socket

import pytest

from conftest import ROOT, offline_env, run_cli

TINY_LM = ROOT / "examples" / "weights" / "tiny_lm"


def test_an_hf_folder_plans_without_a_request(counting_proxy, tmp_path):
    proxy, seen = counting_proxy
    proc = run_cli("plan", f"hf:{TINY_LM}", "--profile", "host", env=offline_env(proxy, tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert seen == [], f"a request went out: {seen}"


def test_while_a_model_loads_no_connection_leaves_this_machine(counting_proxy, monkeypatch):
    """The guard itself: a library with no offline switch of its own, trying to fetch through the
    user's proxy or straight to a host, fails at once and sends nothing."""
    import urllib.request

    from edgeprune.offline import REFUSED, no_network

    proxy, seen = counting_proxy
    monkeypatch.setenv("HTTPS_PROXY", proxy)
    monkeypatch.setenv("HTTP_PROXY", proxy)
    with no_network():
        with pytest.raises(OSError, match="network closed"):  # an opener built now: the proxy is unset
            urllib.request.build_opener().open("https://download.pytorch.org/models/resnet18-f37072fd.pth",
                                               timeout=5)
        with pytest.raises(OSError, match="network closed"):  # an opener that already holds the proxy
            urllib.request.build_opener(urllib.request.ProxyHandler({"https": proxy})).open(
                "https://download.pytorch.org/models/resnet18-f37072fd.pth", timeout=5)
        with pytest.raises(OSError, match="network closed"):
            socket.create_connection(("203.0.113.7", 443), timeout=5)
    assert seen == [] and "network closed" in REFUSED
    # and afterwards the machine's network is the user's again: the proxy is reached
    with pytest.raises(OSError):
        urllib.request.build_opener().open("http://example.invalid/", timeout=5)
    assert len(seen) == 1
