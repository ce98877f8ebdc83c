"""What measures: a Device times uploads with a protocol and says who measured.

Three implement it: the local device (ONNX Runtime on this machine, device/local.py), one agent
(measure/agent_client.AgentClient) and a farm of agents (farm/). The build's latency stage and
`bench` talk to a Device and never to one of them by name, so a farm replaces an agent without
either knowing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol as TypingProtocol
from typing import runtime_checkable

import numpy as np

from edgeprune.timing import Protocol
from edgeprune.uploads import UploadModel


@runtime_checkable
class Device(TypingProtocol):
    """Times models side by side; every reply names the device and who measured (``agent``)."""

    def info(self) -> dict:
        """Returns the device's description, runtimes, formats and threads."""

    def identity(self) -> list:
        """Returns what decides its measurements (hardware, threads, runtime versions), not its address."""

    def measure(self, models: Sequence[UploadModel], inputs: Sequence[np.ndarray], threads: int | None = None,
                protocol: Protocol | None = None) -> dict:
        """Returns ``{"device", "agent", "threads", "seconds", "results": {role: latency statistics + runtime}}``."""

    def measure_generation(self, models: Sequence[UploadModel], prompt: int, gen: int, repeats: int = 1,
                           threads: int | None = None) -> dict:
        """Returns ``{"device", "agent", "threads", "seconds", "results": {role: generation figures}}`` of decoders."""
