"""The farm file (devices.toml): each agent's URL, the profile it stands for, a name, where its token comes from.

    [[agent]]
    name = "orin-1"
    url = "http://10.0.0.21:8765"
    profile = "jetson-orin-nano"
    token_env = "ORIN_TOKEN"        # the environment variable holding its token (default EDGEPRUNE_AGENT_TOKEN)

Reading it checks everything that needs no network: TOML, keys, names, URLs, that each profile
exists. A profile given as a path is read relative to the farm file.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import tomllib
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from edgeprune.device.wire import TOKEN_ENV
from edgeprune.errors import InputError
from edgeprune.web import parse_url

MAX_FARM_BYTES = 1_000_000
MAX_AGENTS = 10_000


class AgentEntry(BaseModel):
    """One agent of the farm."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    url: str
    profile: str
    token_env: str = TOKEN_ENV

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", value):
            raise ValueError("a name is 1-64 letters, digits, '.', '_' or '-'")
        return value

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        parse_url(value)  # ValueError, which pydantic reports with the entry
        return value.rstrip("/")

    @field_validator("token_env")
    @classmethod
    def _token_env(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,127}", value):
            raise ValueError("token_env is the name of an environment variable")
        return value


class FarmFile(BaseModel):
    """The agents of a farm file, in its order."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    agent: list[AgentEntry]


def load_farm(path: str | Path) -> tuple[AgentEntry, ...]:
    """Returns the farm file's agents, profiles resolved; InputError in one line for anything wrong."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"--farm {path}: no such file (a devices.toml listing [[agent]] entries)")
    if path.stat().st_size > MAX_FARM_BYTES:
        raise InputError(f"--farm {path}: over {MAX_FARM_BYTES // 1_000_000} MB; a farm file lists agents")
    try:
        data = tomllib.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise InputError(f"--farm {path}: not TOML ({str(exc).splitlines()[0][:160]})") from None
    try:
        agents = FarmFile.model_validate(data).agent
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InputError(f"--farm {path}: {where}: {first['msg'][:200]}") from None
    if not agents:
        raise InputError(f"--farm {path}: no [[agent]] entries")
    if len(agents) > MAX_AGENTS:
        raise InputError(f"--farm {path}: {len(agents)} agents, more than {MAX_AGENTS}")
    names = [a.name for a in agents]
    twice = next((n for n in names if names.count(n) > 1), None)
    if twice:
        raise InputError(f"--farm {path}: two agents are named {twice!r}")
    return tuple(agent.model_copy(update={"profile": _profile_name(agent.profile, path)}) for agent in agents)


def _profile_name(profile: str, farm: Path) -> str:
    """Returns the name of the profile an entry gives (a registry name, or a .toml relative to the farm file)."""
    from edgeprune.profile import load_profile

    given = profile
    if profile.endswith(".toml") and not Path(profile).is_absolute():
        given = str(farm.parent / profile)
    try:
        return load_profile(given).name
    except InputError as exc:
        raise InputError(f"--farm {farm}: {exc}") from None


def agents_for(agents: tuple[AgentEntry, ...], profile: str, farm: str | Path) -> tuple[AgentEntry, ...]:
    """Returns the agents that stand for the profile; InputError naming the profiles the farm has."""
    chosen = tuple(a for a in agents if a.profile == profile)
    if not chosen:
        have = sorted({a.profile for a in agents})
        raise InputError(f"--farm {farm}: no agent stands for profile {profile} (its agents stand for "
                         f"{', '.join(have)})")
    return chosen


def check_tokens(agents: tuple[AgentEntry, ...], farm: str | Path) -> None:
    """Raises InputError naming the token variables of these agents that are not set."""
    missing = sorted({a.token_env for a in agents if not os.environ.get(a.token_env)})
    if missing:
        raise InputError(f"--farm {farm}: {', '.join(missing)} is not set: set it to the token its agents were "
                         "started with")
