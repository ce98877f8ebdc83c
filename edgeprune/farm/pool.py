"""Leases on a farm's agents: one measurement an agent at a time, spread over the free ones, down ones skipped.

The pool is plain state behind a lock, so one process's threads share it directly and a Ray
run shares it between workers as an actor (farm/ray_pool.py) with the same methods.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from edgeprune.measure.agent_client import AgentError

FREE, BUSY, DOWN = "free", "busy", "down"


class FarmDown(AgentError):
    """Every agent the job could run on is down (exit code 2): the device's failure, never the candidate's."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "unreachable")


@dataclass
class AgentState:
    """One agent's lease state and what it did."""

    state: str = FREE
    why: str | None = None
    done: int = 0
    failed: int = 0
    since: float = 0.0  # when it was last given back: the longest-free agent is leased first


class AgentPool:
    """Leases agents by name; ``lease`` waits for a free one and fails when all are down."""

    def __init__(self, names: list[str]) -> None:
        self._states = {name: AgentState() for name in names}
        self._changed = threading.Condition()

    def lease(self, names: list[str], timeout_s: float = 3600.0) -> str:
        """Returns a free agent among ``names`` (the one free longest), marked busy; FarmDown if all are down."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while True:
                mine = {n: self._states[n] for n in names}
                free = [n for n, s in mine.items() if s.state == FREE]
                if free:
                    name = min(free, key=lambda n: mine[n].since)
                    mine[name].state = BUSY
                    return name
                if all(s.state == DOWN for s in mine.values()):
                    raise FarmDown("every agent for this job is down: " + "; ".join(
                        f"{n} ({s.why})" for n, s in mine.items())[:600])
                left = deadline - time.monotonic()
                if left <= 0:
                    raise FarmDown(f"no agent of {', '.join(names)} was free within {timeout_s:g} s")
                self._changed.wait(min(left, 5.0))

    def give_back(self, name: str, done: bool, down: str | None = None) -> None:
        """Frees a leased agent (``done``: it measured), or marks it down with the reason."""
        with self._changed:
            state = self._states[name]
            if down is not None:
                state.state, state.why = DOWN, down
                state.failed += 1
            else:
                state.state = FREE
                state.done += int(done)
            state.since = time.monotonic()
            self._changed.notify_all()

    def snapshot(self) -> dict[str, dict]:
        """Returns each agent's state, measurements done and why it is down."""
        with self._changed:
            return {n: {"state": s.state, "done": s.done, "failed": s.failed, "why": s.why}
                    for n, s in self._states.items()}
