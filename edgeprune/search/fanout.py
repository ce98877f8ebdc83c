"""Candidates fanned out as Ray tasks: pruning, lowering, verification and scoring on Ray's CPU workers,
measurement on the farm (agents leased through one pool actor shared by every worker) or on the worker's
own machine, one measurement a machine at a time.

``RayRun`` is the ``elsewhere`` a CandidateEvaluator hands its missing candidates to: it submits
one task each, with the evaluation spec (plain JSON: a worker loads the workload once and keeps
it) and yields each outcome as it finishes, so the evaluator caches it at once. Ray is imported
only here, and only when a run asks for it (``--ray``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from edgeprune.errors import InputError
from edgeprune.farm.pool import AgentPool, FarmDown
from edgeprune.search.candidates import Candidate
from edgeprune.search.spec import EvaluationSpec

LOCAL = "local"
OBJECT_STORE_BYTES = 256 << 20  # outcomes are small JSON; the local store need not reserve gigabytes


@dataclass
class FanOut:
    """What a run's candidates are doing, for progress: counts and each agent's state."""

    queued: int = 0
    running: int = 0
    done: int = 0
    agents: dict[str, dict] = field(default_factory=dict)

    def line(self) -> str:
        text = f"{self.queued} queued, {self.running} running, {self.done} done"
        if self.agents:
            text += "; agents: " + ", ".join(
                f"{n} {a['state']} ({a['done']} measured)" for n, a in self.agents.items())
        return text


def farm_agent_names(farm: str | None, profile: str) -> list[str]:
    """Returns the names of a farm file's agents for the profile (whose leases the run's pool keeps)."""
    if not farm:
        return []
    from edgeprune.farm.file import agents_for, load_farm

    return [a.name for a in agents_for(load_farm(farm), profile, farm)]


def _import_ray():
    try:
        import ray
    except ImportError:
        raise InputError("--ray needs Ray: pip install 'edgeprune[ray]'") from None
    return ray


def absolute_spec(spec: EvaluationSpec) -> EvaluationSpec:
    """Returns the spec with its files as absolute paths, so a worker in another folder finds them."""
    def absolute(arg: str | None) -> str | None:
        if not arg or arg.startswith(("timm:", "torchvision:")):
            return arg
        prefix = "hf:" if arg.startswith("hf:") else ""
        path, sep, func = arg[len(prefix):].partition(":")
        return prefix + str(Path(path).resolve()) + sep + func

    profile = spec.profile if not spec.profile.endswith(".toml") else str(Path(spec.profile).resolve())
    return replace(spec, model=absolute(spec.model), data=absolute(spec.data), profile=profile,
                   farm=str(Path(spec.farm).resolve()) if spec.farm else None)


class RayRun:
    """A Ray session for one run: started here (``--ray``) or joined (``--ray ADDRESS``), shut down after."""

    def __init__(self, spec: EvaluationSpec, address: str = LOCAL, farm_agents: list[str] | None = None,
                 show: Callable[[FanOut], None] = lambda _: None, cpus: int | None = None) -> None:
        self.spec = absolute_spec(spec)
        self.address = address
        self.farm_agents = farm_agents or []
        self.show = show
        self.fanout = FanOut()
        self._ray = None
        self._started = False
        self._pool = None
        self.cpus = cpus  # a local Ray's workers (default: one a core of this machine)

    def __enter__(self) -> RayRun:
        ray = self._ray = _import_ray()
        env = {k: os.environ[k] for k in self._env_names() if k in os.environ}
        options = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
                       runtime_env={"env_vars": env} if env else None)
        try:
            if self.address == LOCAL:
                ray.init(num_cpus=self.cpus or os.cpu_count() or 1, object_store_memory=OBJECT_STORE_BYTES, **options)
            else:
                ray.init(address=self.address, **options)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise InputError(f"--ray {self.address}: cannot start or join Ray: {str(exc).splitlines()[0][:200]}"
                             ) from None
        self._started = True
        if self.farm_agents:
            self._pool = ray.remote(num_cpus=0, max_concurrency=1024)(_PoolActor).remote(self.farm_agents)
        return self

    def _env_names(self) -> list[str]:
        names = ["EDGEPRUNE_CACHE_DIR", "EDGEPRUNE_AGENT_TOKEN", "PYTHONPATH"]
        if self.spec.farm:
            from edgeprune.farm.file import load_farm

            names += sorted({a.token_env for a in load_farm(self.spec.farm)})
        return names

    def __exit__(self, *exc) -> None:
        if self._started:
            self._ray.shutdown()
            self._started = False

    @property
    def width(self) -> int:
        """Returns how many candidates run at once: the cluster's CPUs."""
        return max(1, int(self._ray.cluster_resources().get("CPU", 1)))

    def __call__(self, candidates: list[Candidate], stage: str) -> Iterator[tuple[Candidate, dict]]:
        """Yields (candidate, outcome dict) as each task finishes; a task whose worker died is an error outcome."""
        ray = self._ray
        remote = ray.remote(num_cpus=1, max_retries=2)(_evaluate_remote)
        spec_json = self.spec.to_json()
        pending = {remote.remote(spec_json, asdict(c), stage, self._pool): c for c in candidates}
        self.fanout.queued += len(pending)
        try:
            while pending:
                self._update(len(pending))
                done, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
                for ref in done:
                    candidate = pending.pop(ref)
                    try:
                        data = ray.get(ref)
                    except ray.exceptions.RayTaskError as exc:
                        cause = getattr(exc, "cause", None)
                        if isinstance(cause, FarmDown) or isinstance(cause, InputError):
                            raise cause from None
                        data = {"candidate": asdict(candidate), "error": f"worker failed: {str(exc)[-300:]}"}
                    except ray.exceptions.RayError as exc:  # the worker died past its retries
                        data = {"candidate": asdict(candidate), "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
                    self.fanout.done += 1
                    self.fanout.queued -= 1
                    yield candidate, data
            self._update(0)
        finally:
            # interrupted: what has finished is already cached; the rest goes with the workers when the run
            # shuts Ray down (cancelling tasks one by one races their completion inside Ray itself)
            pending.clear()

    def _update(self, pending: int) -> None:
        self.fanout.running = min(pending, self.width)
        if self._pool is not None:
            self.fanout.agents = self._ray.get(self._pool.snapshot.remote())
        self.show(self.fanout)


class _PoolActor(AgentPool):
    """The farm's leases as a Ray actor: every worker's Farm asks it which agent is free."""


class RayPool:
    """The pool actor seen from a worker, with AgentPool's methods; FarmDown crosses back as FarmDown."""

    def __init__(self, actor) -> None:
        self.actor = actor

    def lease(self, names: list[str], timeout_s: float = 3600.0) -> str:
        import ray

        try:
            return ray.get(self.actor.lease.remote(names, timeout_s))
        except ray.exceptions.RayTaskError as exc:
            raise FarmDown(str(getattr(exc, "cause", exc))) from None

    def give_back(self, name: str, done: bool, down: str | None = None) -> None:
        import ray

        ray.get(self.actor.give_back.remote(name, done, down))

    def snapshot(self) -> dict[str, dict]:
        import ray

        return ray.get(self.actor.snapshot.remote())


def _evaluate_remote(spec_json: str, candidate: dict, stage: str, pool) -> dict:
    """A Ray task: one candidate's outcome from the spec (the worker keeps the workload between tasks)."""
    from edgeprune.search.spec import evaluate_candidate

    outcome = evaluate_candidate(EvaluationSpec.from_json(spec_json), Candidate(**candidate), stage,
                                 RayPool(pool) if pool is not None else None)
    return outcome.to_dict()
