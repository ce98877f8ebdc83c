"""`edgeprune farm status`: each agent of a farm file asked at once, its health, device, runtimes and queue."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from edgeprune.farm.file import AgentEntry, load_farm
from edgeprune.measure.agent_client import AgentClient, AgentError

STATUS_TIMEOUT_S = 10.0


def agent_status(agent: AgentEntry) -> dict:
    """Returns one agent's row: up with its device, runtimes, threads, queue and measurements, or down and why."""
    row = {"name": agent.name, "url": agent.url, "profile": agent.profile}
    token = os.environ.get(agent.token_env, "")
    if not token:
        return {**row, "health": "down", "why": f"{agent.token_env} is not set"}
    try:
        info = AgentClient(agent.url, token=token, timeout_s=STATUS_TIMEOUT_S).info()
    except AgentError as exc:
        return {**row, "health": "down", "why": str(exc)}
    return {**row, "health": "up", "device": info.get("device"), "runtimes": info.get("runtimes", {}),
            "threads": info.get("threads"), "queue": info.get("queue"), "measurements": info.get("measurements")}


def farm_status(path: str | Path) -> list[dict]:
    """Returns every agent's row, in the farm file's order (asked in parallel, each within a deadline)."""
    agents = load_farm(path)
    with ThreadPoolExecutor(max_workers=min(32, len(agents))) as pool:
        return list(pool.map(agent_status, agents))
