"""Candidates of a plan: prune, lower and time one (strategy, sparsity, quantization), cached."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from edgeprune import __version__
from edgeprune.backends import LowerRequest, get_backend
from edgeprune.gate import Budgets, check_budgets
from edgeprune.host import Host, this_host
from edgeprune.measure.local import measure_onnx_files, stand_in
from edgeprune.measure.protocol import Protocol
from edgeprune.plan import Plan, precision_for
from edgeprune.profile import Profile
from edgeprune.stats import model_stats
from edgeprune.workload import Workload

CACHE_ENV = "EDGEPRUNE_CACHE_DIR"
SEARCH_HEADROOM = 0.15


@dataclass(frozen=True)
class Candidate:
    """One point of the search space."""

    kind: str
    sparsity: float
    quantize: str

    @property
    def label(self) -> str:
        if self.kind == "none" or (self.sparsity == 0 and self.kind != "nm"):
            base = "dense"
        else:
            base = f"{self.kind} {self.sparsity:.2f}"
        return base + ("" if self.quantize == "none" else f" + {self.quantize}")


@dataclass
class Outcome:
    """What a candidate costs and scores; ``misses`` names the budgets it fails."""

    candidate: Candidate
    latency_ms: float | None = None
    latency_source: str | None = None
    size_bytes: int | None = None
    macs: int | None = None
    nonzero_params: int | None = None
    metric: float | None = None
    drop: float | None = None
    recovered_steps: int = 0
    misses: list[str] = field(default_factory=list)
    error: str | None = None

    def to_dict(self) -> dict:
        out = asdict(self)
        out["candidate"] = {**asdict(self.candidate), "label": self.candidate.label}
        return out

    @classmethod
    def from_dict(cls, data: dict) -> Outcome:
        data = dict(data)
        cand = data.pop("candidate")
        cand.pop("label", None)
        return cls(candidate=Candidate(**cand), **data)


def cache_dir() -> Path:
    """Returns the folder candidate results are cached in (EDGEPRUNE_CACHE_DIR or ~/.cache)."""
    root = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "edgeprune"
    return Path(root) / "candidates"


def model_fingerprint(model: torch.nn.Module) -> str:
    """Returns a hash of the model's class and weights (what makes a cached result valid)."""
    h = hashlib.sha256(type(model).__qualname__.encode())
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:24]


class CandidateEvaluator:
    """Prunes, lowers, times and scores candidates of one plan; results are cached on disk.

    Latency is measured on this machine when it stands in for the profile's device (or
    ``measure_here`` says so), and estimated otherwise (labelled so); accuracy is scored on
    the artifact where it runs here.
    """

    def __init__(self, workload: Workload, profile: Profile, plan: Plan, budgets: Budgets,
                 criterion: str | None = None, threads: int | None = None, use_cache: bool = True,
                 agent=None, host: Host | None = None, measure_here: bool = False) -> None:
        self.workload = workload
        self.profile = profile
        self.plan = plan
        self.budgets = budgets
        self.criterion = criterion
        self.threads = threads
        self.use_cache = use_cache
        self.agent = agent
        self.host = host or this_host()
        self.measure_here = measure_here
        self._baseline_metric: float | None = None
        self._artifacts: dict = {}
        self._workdir = tempfile.TemporaryDirectory(prefix="edgeprune-candidates-")
        profile_text = profile.path.read_text() if profile.path else profile.model_dump_json()
        self._key_base = json.dumps([__version__, model_fingerprint(workload.model), profile_text,
                                     plan.format, criterion, plan.nm, threads, measure_here,
                                     [self.host.description, sorted(self.host.flags)],
                                     agent.url if agent is not None else None])

    # ------------------------------------------------------------------ cache
    def _path(self, candidate: Candidate, stage: str) -> Path:
        key = hashlib.sha256(json.dumps([self._key_base, asdict(candidate), stage]).encode()).hexdigest()[:32]
        return cache_dir() / f"{key}.json"

    def _load(self, candidate: Candidate, stage: str) -> Outcome | None:
        path = self._path(candidate, stage)
        if not self.use_cache or not path.exists():
            return None
        try:
            outcome = Outcome.from_dict(json.loads(path.read_text()))
        except (ValueError, TypeError, KeyError):
            return None
        # the cache holds costs and scores; which budgets they miss depends on this build's budgets
        outcome.misses = self.misses(outcome, with_accuracy=stage != "cost")
        return outcome

    def _store(self, outcome: Outcome, stage: str) -> None:
        if not self.use_cache:
            return
        path = self._path(outcome.candidate, stage)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(outcome.to_dict()))
        tmp.replace(path)

    # ------------------------------------------------------------------ stages
    def plan_for(self, candidate: Candidate) -> Plan:
        """Returns the plan with the candidate's kind, amount and quantization."""
        return replace(self.plan, kind=candidate.kind, sparsity=candidate.sparsity, quantization=candidate.quantize,
                       precision=precision_for(candidate.quantize, self.plan.format), search=None)

    def prune(self, candidate: Candidate, recover_steps: int = 0) -> tuple[torch.nn.Module, dict]:
        from edgeprune.build import _prune

        return _prune(self.workload, self.plan_for(candidate), self.profile, recover_steps)

    def _built(self, candidate: Candidate, recover_steps: int = 0):
        """Returns (pruned model, artifact) for the candidate, built once per evaluator."""
        key = (candidate, recover_steps)
        if key not in self._artifacts:
            model, _ = self.prune(candidate, recover_steps)
            folder = Path(self._workdir.name) / f"c{len(self._artifacts)}"
            folder.mkdir()
            self._artifacts[key] = (model, self._lower(model, candidate, folder))
        return self._artifacts[key]

    def cost(self, candidate: Candidate) -> Outcome:
        """Returns the candidate's latency, size and MACs (cached)."""
        cached = self._load(candidate, "cost")
        if cached is not None:
            return cached
        outcome = Outcome(candidate)
        try:
            model, artifact = self._built(candidate)
            stats = model_stats(model, self.workload.example_inputs)
            outcome.macs, outcome.nonzero_params = stats["macs"], stats["nonzero_params"]
            outcome.size_bytes = artifact.size_bytes
            outcome.latency_ms, outcome.latency_source = self._latency(artifact, model)
        except Exception as exc:  # a candidate that cannot be built is recorded, not fatal
            outcome.error = f"{type(exc).__name__}: {exc}"[:300]
        outcome.misses = self.misses(outcome, with_accuracy=False)
        self._store(outcome, "cost")
        return outcome

    def score(self, candidate: Candidate, recover_steps: int = 0) -> Outcome:
        """Returns the candidate's cost plus its metric measured on the artifact (cached).

        With recovery, the recovered model is a different artifact: it is lowered and timed
        again, so the outcome describes exactly what a build of it would ship.
        """
        stage = f"score-{recover_steps}"
        cached = self._load(candidate, stage)
        if cached is not None:
            return cached
        outcome = Outcome(**{**self.cost(candidate).__dict__})
        if outcome.error is None and self.workload.evaluate is not None:
            try:
                model, artifact = self._built(candidate, recover_steps)
                if recover_steps:
                    outcome.size_bytes = artifact.size_bytes
                    outcome.latency_ms, outcome.latency_source = self._latency(artifact, model)
                predict = get_backend(self.plan.format).predictor(artifact)
                if predict is None:
                    from edgeprune.build import _torch_predict

                    predict = _torch_predict(model)
                with torch.no_grad():
                    outcome.metric = float(self.workload.evaluate(predict))
                outcome.drop = self.workload.drop(self.baseline_metric(), outcome.metric)
                outcome.recovered_steps = recover_steps
            except Exception as exc:
                outcome.error = f"{type(exc).__name__}: {exc}"[:300]
        outcome.misses = self.misses(outcome, with_accuracy=True)
        self._store(outcome, stage)
        return outcome

    def close(self) -> None:
        """Removes the candidates' artifacts from disk."""
        self._artifacts.clear()
        self._workdir.cleanup()

    def __enter__(self) -> CandidateEvaluator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def baseline_metric(self) -> float:
        if self._baseline_metric is None:
            from edgeprune.build import _evaluate_torch

            self._baseline_metric = _evaluate_torch(self.workload, self.workload.model)
        return self._baseline_metric

    def misses(self, outcome: Outcome, with_accuracy: bool) -> list[str]:
        """Returns the names of the budgets the outcome does not meet (or cannot prove)."""
        if outcome.error:
            return ["build"]
        budgets = self.budgets if with_accuracy else replace(self.budgets, max_accuracy_drop=None)
        budgets = replace(budgets, max_memory_mb=None)
        latency = outcome.latency_ms
        if latency is not None and outcome.latency_source == "measured":
            # A quick candidate timing must clear the budget with headroom, so that the final,
            # longer side-by-side measurement does not turn a narrow pass into a miss.
            latency *= 1 + SEARCH_HEADROOM
        report = {
            "latency": {"source": outcome.latency_source, f"{budgets.latency_stat}_ms": latency, "spread": 0.0},
            "artifact": {"size_bytes": outcome.size_bytes},
            "accuracy": {"drop": outcome.drop},
        }
        return [r["name"] for r in check_budgets(report, budgets) if not r["met"]]

    # ------------------------------------------------------------------ helpers
    def _lower(self, model: torch.nn.Module, candidate: Candidate, folder: Path):
        plan = self.plan_for(candidate)
        backend = get_backend(plan.format)
        request = LowerRequest(precision=plan.precision, profile=self.profile,
                               calibration=self.workload.calibration_batches(), sparsity=plan.kind,
                               nm=plan.nm or (2, 4))
        backend.check(request)
        return backend.lower(model, tuple(self.workload.example_inputs), request, folder)

    def _latency(self, artifact, model: torch.nn.Module) -> tuple[float | None, str]:
        """Returns the candidate's latency: on the agent, here when this is the device, else estimated."""
        stat = "p90_ms" if self.budgets.latency_stat == "p90" else "median_ms"
        if self.agent is not None:
            from edgeprune.build import _device_upload

            reply = self.agent.measure([_device_upload(artifact)],
                                       [t.detach().cpu().numpy() for t in self.workload.example_inputs], self.threads)
            return float(reply["results"]["artifact"][stat]), "measured"
        here = stand_in(self.profile, artifact.precision, self.host, self.measure_here, self.threads)
        if here.here and artifact.measure_path is not None:
            stats = measure_onnx_files({"a": artifact.measure_path}, self.workload.example_inputs, here.threads,
                                       Protocol(warmup_s=0.1, round_s=0.1, min_rounds=5, max_rounds=12))["a"]
            return getattr(stats, stat), "measured"
        from edgeprune.build import _estimate_graph
        from edgeprune.measure.estimate import estimate_onnx

        shapes = [tuple(int(d) for d in t.shape) for t in self.workload.example_inputs]
        with tempfile.TemporaryDirectory(prefix="edgeprune-estimate-") as tmp:
            graph, precision = _estimate_graph(artifact, model, self.workload, Path(tmp))
            return float(estimate_onnx(graph, shapes, self.profile, precision).ms), "estimated"
