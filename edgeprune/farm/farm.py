"""A farm as one Device: each measurement goes to a free agent of the build's profile; a job whose agent
dies is measured on another, and that agent is marked down.

Nothing is measured twice: a job moves on only when its agent did not answer (the connection
failed, was cut or timed out), so its result was never had; an agent that answered that the
model is wrong is not asked again elsewhere (every agent would answer the same).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from edgeprune.device.protocol import Device
from edgeprune.farm.file import AgentEntry, agents_for, check_tokens, load_farm
from edgeprune.farm.pool import AgentPool
from edgeprune.measure.agent_client import AgentClient, AgentError
from edgeprune.timing import Protocol
from edgeprune.uploads import UploadModel

BUSY_RETRY_S = 2.0


class Farm:
    """The agents of one profile, as a Device; ``pool`` is shared by every process of a distributed run."""

    def __init__(self, agents: Sequence[AgentEntry], source: str = "devices.toml", pool=None) -> None:
        self.agents = {a.name: a for a in agents}
        self.source = source
        self.pool = pool if pool is not None else AgentPool(list(self.agents))
        check_tokens(tuple(agents), source)
        self.clients = {a.name: AgentClient(a.url, token=os.environ[a.token_env]) for a in agents}
        self._identity: list | None = None

    @classmethod
    def for_profile(cls, path: str | Path, profile: str, pool=None) -> Farm:
        """Returns the farm file's agents that stand for the profile; InputError if none does."""
        return cls(agents_for(load_farm(path), profile, path), str(path), pool)

    def label(self, name: str) -> str:
        """Returns how a latency names the agent that measured it."""
        return f"{name} ({self.agents[name].url})"

    def _on_an_agent(self, job: Callable[[AgentClient], dict]) -> dict:
        """Returns the reply of the first agent that answers the job; agents that do not are marked down."""
        import time

        names = list(self.agents)
        while True:
            name = self.pool.lease(names)
            try:
                reply = job(self.clients[name])
            except AgentError as exc:
                if exc.kind == "unreachable":
                    self.pool.give_back(name, False, down=str(exc)[:300])
                    continue
                self.pool.give_back(name, False)
                if exc.kind == "busy":
                    time.sleep(BUSY_RETRY_S)
                    continue
                raise
            except BaseException:
                self.pool.give_back(name, False)
                raise
            self.pool.give_back(name, True)
            reply["agent"] = self.label(name)
            return reply

    def info(self) -> dict:
        return self._on_an_agent(lambda client: dict(client.info()))

    def identity(self) -> list:
        """Returns the identity of the farm's devices: what its answering agents measure on (the same kind
        of device answers the same whichever agent measured, so a farm shares the cache with one agent)."""
        if self._identity is None:
            seen = []
            for client in self.clients.values():
                try:
                    mine = client.identity()
                except AgentError:
                    continue
                if mine not in seen:
                    seen.append(mine)
            if not seen:
                self._on_an_agent(lambda client: client.info())  # FarmDown, naming every agent and why
            self._identity = seen[0] if len(seen) == 1 else sorted(seen, key=repr)
        return self._identity

    def measure(self, models: Sequence[UploadModel], inputs: Sequence[np.ndarray], threads: int | None = None,
                protocol: Protocol | None = None) -> dict:
        return self._on_an_agent(lambda client: client.measure(models, inputs, threads, protocol))

    def measure_generation(self, models: Sequence[UploadModel], prompt: int, gen: int, repeats: int = 1,
                           threads: int | None = None) -> dict:
        return self._on_an_agent(lambda client: client.measure_generation(models, prompt, gen, repeats, threads))


def connect_device(url: str | None, farm: str | None, profile: str, pool=None) -> Device | None:
    """Returns the device agent at ``url``, or the farm's agents for the profile, after checking one answers
    to our token (None for neither: measured here or estimated). ``pool``: the leases a distributed run shares."""
    if farm:
        device = Farm.for_profile(farm, profile, pool)
        device.identity()  # FarmDown, naming every agent and why, when none answers
        return device
    if url:
        client = AgentClient(url)
        client.info()
        return client
    return None
