"""One evaluation path: a plan in, its measurements out, for the build, the budget search and the sweep alike.

``evaluate`` prunes the model as the plan says, lowers it, verifies the artifact against
PyTorch, times or estimates it and scores it on the artifact; what a search records of a
candidate is therefore what a build of the same plan reports.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from edgeprune.backends import Artifact, LowerRequest, get_backend
from edgeprune.backends.onnx_tools.export import export_onnx
from edgeprune.device.protocol import Device
from edgeprune.gate import Budgets, undecided
from edgeprune.host import Host
from edgeprune.llm.generate_check import check_generation
from edgeprune.measure.generation import GenerationSettings, generation_of, unavailable
from edgeprune.measure.latency import Timing, latency_of
from edgeprune.measurements import (
    MEASURED,
    UNAVAILABLE,
    Accuracy,
    Generation,
    Latency,
    Measurements,
    Memory,
)
from edgeprune.metric import Score, slice_section
from edgeprune.planning import Plan
from edgeprune.profile import Profile
from edgeprune.search.pruning import Pruned, prune_for_plan
from edgeprune.stats import model_stats
from edgeprune.tasks import CAUSAL_LM
from edgeprune.verify import Verification, verify_numeric
from edgeprune.workload import Workload, torch_predictor

VERIFY_BATCHES = 4
# a causal LM's decoder generates after this many tokens of a calibration window (then 32 cached steps)
GENERATION_PROMPT = 16
# pruned models a context keeps: the search's last ones, so the final build of the chosen
# candidate does not prune and recover it again (a causal LM's copies are large: keep few)
KEEP_PRUNED = 2
_UNSCORED = object()


@contextmanager
def silent_step(name: str) -> Iterator[None]:
    """A step that shows nothing (the CLI passes one that prints progress)."""
    yield


@dataclass
class Context:
    """What stays the same for every plan one build evaluates: the workload, the device and how to time it."""

    workload: Workload
    profile: Profile
    budgets: Budgets = field(default_factory=Budgets)
    host: Host | None = None
    measure_here: bool = False
    threads: int | None = None
    agent: Device | None = None
    generation: GenerationSettings = field(default_factory=GenerationSettings)

    def __post_init__(self) -> None:
        self._workdir = tempfile.TemporaryDirectory(prefix="edgeprune-evaluate-")
        self._dense_onnx: Path | None = None
        self._dense_decoder: Artifact | None = None
        self._baseline_metric = _UNSCORED
        self._pruned: dict[tuple, Pruned] = {}

    def timing(self, final: bool) -> Timing:
        return Timing(self.profile, self.budgets, self.host, self.measure_here, self.threads, self.agent, final)

    def dense_onnx(self) -> Path:
        """Returns the dense model's ONNX graph (the baseline every speed-up is against), exported once."""
        if self._dense_onnx is None:
            self._dense_onnx = export_onnx(self.workload.model, tuple(self.workload.example_inputs),
                                           Path(self._workdir.name) / "dense.onnx")
        return self._dense_onnx

    def lowering_options(self) -> dict:
        """Returns what the workload gives a backend beyond the model: a causal LM's tokenizer and context."""
        if not self.workload.is_causal_lm:
            return {}
        text = self.workload.text
        return {"tokenizer": text.tokenizer if text else None, "context": self.generation.context}

    def dense_decoder(self, plan: Plan) -> Artifact:
        """Returns the dense model's fp32 decoder (a causal LM's baseline), lowered once."""
        if self._dense_decoder is None:
            dense = replace(plan, kind="none", sparsity=0.0, quantization="none", precision="fp32", recover=0)
            self._dense_decoder = dense.backend().lower(
                self.workload.model, tuple(self.workload.example_inputs),
                dense.lower_request(self.profile, (), self.lowering_options()), self.scratch("dense-decoder"))
        return self._dense_decoder

    def baseline_score(self) -> Score | None:
        """Returns the dense PyTorch model's metric with its slices, computed once."""
        if self._baseline_metric is _UNSCORED:
            self._baseline_metric = self.workload.score_slices(torch_predictor(self.workload.model))
        return self._baseline_metric

    def baseline_metric(self) -> float | None:
        """Returns the dense PyTorch model's headline metric, computed once."""
        score = self.baseline_score()
        return None if score is None else score.value

    def pruned(self, plan: Plan) -> Pruned:
        """Returns the model the plan prunes (and recovers), reusing the same one for the same pruning.

        Quantization and the format do not change the PyTorch model, so a candidate's fp32 and
        int8 lowerings, and the final build of the chosen candidate, share one pruned model.
        """
        key = (plan.kind, plan.sparsity, plan.criterion, plan.nm, plan.recover)
        if key not in self._pruned:
            self._pruned[key] = prune_for_plan(self.workload, plan, self.profile)
            while len(self._pruned) > KEEP_PRUNED:
                del self._pruned[next(iter(self._pruned))]
        else:
            self._pruned[key] = self._pruned.pop(key)  # the most recently used is kept longest
        return self._pruned[key]

    def scratch(self, name: str) -> Path:
        """Returns a new empty folder that lives as long as the context (a candidate's artifact)."""
        return Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self._workdir.name))

    def close(self) -> None:
        self._pruned.clear()
        self._workdir.cleanup()

    def __enter__(self) -> Context:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class Evaluation:
    """One plan's model, artifact and measurements."""

    plan: Plan
    pruned: Pruned
    stats: dict
    artifact: Artifact
    verification: Verification
    latency: Latency
    memory: Memory
    accuracy: Accuracy | None = None
    generation: Generation | None = None

    def measurements(self) -> Measurements:
        return Measurements(self.latency, self.artifact.size_bytes, self.memory, self.accuracy, self.generation)


def evaluate(ctx: Context, plan: Plan, folder: Path, *, final: bool = True, score: bool = True,
             step: Callable = silent_step) -> Evaluation:
    """Returns the plan's measurements, its artifact lowered into ``folder``.

    ``final``: the build's measurement (side by side with the dense baseline, decisive);
    otherwise a search's quick timing. ``score``: also score the metric on the artifact
    (``score_artifact`` adds it later). ``step(name)`` wraps each stage (the CLI's progress).
    """
    workload, profile = ctx.workload, ctx.profile
    backend = plan.backend()
    request = plan.lower_request(profile, workload.calibration_batches(), ctx.lowering_options())
    backend.check(request)
    with step(f"prune ({plan.kind})"):
        pruned = ctx.pruned(plan)
        stats = model_stats(pruned.model, workload.example_inputs)
    with step(f"lower to {plan.format} ({plan.precision})"):
        artifact = backend.lower(pruned.model, tuple(workload.example_inputs), request, folder)
    with step("verify the artifact against PyTorch"):
        predict = backend.predictor(artifact)  # one runtime session verifies and scores the artifact
        verification = verify_artifact(workload, pruned.model, artifact, request, predict)
    timing = ctx.timing(final)
    here = timing.stand_in(artifact.precision).here and artifact.measure_path is not None
    generation = None
    if artifact.task == CAUSAL_LM:
        with step("measure generation (tokens per second)" if here else "estimate generation (tokens per second)"):
            baseline = ctx.dense_decoder(plan) if final else None
            latency, memory, generation = generation_stage(timing, artifact, baseline, ctx.generation)
    else:
        with step("measure latency" if ctx.agent or here or artifact.latency else "estimate latency"):
            baseline, same = baseline_graph(ctx, plan, artifact)
            latency, memory = latency_of(timing, artifact, pruned.model, workload.example_inputs, baseline, same)
    evaluation = Evaluation(plan, pruned, stats, artifact, verification, latency, memory, generation=generation)
    if score:
        with step("evaluate accuracy on the artifact"):
            score_artifact(ctx, evaluation, predict)
    return evaluation


def generation_stage(timing: Timing, artifact: Artifact, baseline: Artifact | None,
                     settings: GenerationSettings) -> tuple[Latency, Memory, Generation]:
    """Returns a causal LM artifact's decode latency, memory at the context and generation figures.

    A decoder is measured where this machine stands in for the device and estimated where
    not; an artifact with no KV cache (a full-sequence forward) cannot generate token by
    token, so its figures are unavailable and a budget on them is unproven.
    """
    if "decoder" not in artifact.details:
        why = "the artifact has no KV cache (" + "; ".join(n for n in artifact.notes if "KV cache" in n)[:200] + ")"
        return (Latency(UNAVAILABLE, timing.profile.name, note=why), Memory(UNAVAILABLE, note=why),
                unavailable(artifact, settings, why))
    here = timing.stand_in(artifact.precision)
    reason = None if here.here else here.reason
    agent = timing.agent
    if agent is not None and artifact.format != "onnx":
        agent, reason = None, f"a device agent runs ONNX decoders, not {artifact.format} ones: estimated instead"
    first = generation_of(timing.profile, artifact, baseline, settings, here, timing.final, reason, agent)
    if not timing.final or first[2].source != MEASURED or not undecided(Measurements(*first[:2], generation=first[2]),
                                                                          timing.budgets):
        return first
    # as a latency is: a budget inside the noise is measured once more, and the quieter kept
    second = generation_of(timing.profile, artifact, baseline, settings, here, timing.final, reason, agent)
    kept = min((first, second), key=lambda r: r[2].spread or 0.0)
    spreads = {"first_spread": first[2].spread or 0.0, "second_spread": second[2].spread or 0.0}
    return replace(kept[0], remeasured=spreads), kept[1], kept[2]


def baseline_graph(ctx: Context, plan: Plan, artifact: Artifact) -> tuple[Path, bool]:
    """Returns the dense graph an artifact's speed-up is against, and whether that is the artifact itself."""
    same = not plan.prunes and plan.precision == "fp32" and artifact.format == "onnx"
    return (artifact.measure_path if same else ctx.dense_onnx()), same


def profile_layers(ctx: Context, evaluation: Evaluation) -> dict:
    """Returns the report's per-layer section for an evaluated plan, profiled after its latency was timed.

    A profile that fails (an operator the profiler trips on) is recorded as unavailable: it
    explains a build, it never fails one.
    """
    from edgeprune.measure.layer_profile import layer_profile

    artifact = evaluation.artifact
    if artifact.task == CAUSAL_LM:
        return {"source": "unavailable", "rows": [],
                "note": "no per-layer profile of a decoder: its prompt and decode steps are timed by the generation stage"}
    try:
        baseline, same = baseline_graph(ctx, evaluation.plan, artifact)
        here = ctx.timing(True).stand_in(artifact.precision)
        return layer_profile(artifact, evaluation.pruned.model, ctx.workload.example_inputs, baseline, same,
                             ctx.profile, here)
    except Exception as exc:
        return {"source": "unavailable", "note": f"no layer profile: {type(exc).__name__}: {exc}"[:300], "rows": []}


def verify_artifact(workload: Workload, model, artifact: Artifact, request: LowerRequest,
                    predict: Callable | None) -> Verification:
    """Returns whether the artifact computes what the pruned PyTorch model computes.

    Numerically on a handful of real batches where the artifact runs here (``predict``, the
    backend's predictor; the full metric is scored separately); structurally (spec, storage,
    bit widths) where it cannot (``predict`` None).
    """
    backend = get_backend(artifact.format, artifact.task)
    if predict is None:
        check = getattr(backend, "verify_structure", None)
        if check is None:
            return Verification("structural", True, detail=backend.cannot_run_reason() or "")
        return check(artifact, model, request)
    numeric = verify_numeric(model, predict, workload.calibration_batches()[:VERIFY_BATCHES],
                             artifact.tolerance or request.precision,
                             classifier=workload.task == "classification", subject=artifact.evaluated_on)
    if artifact.task != CAUSAL_LM:
        return numeric
    prompt = workload.calibration_batches()[0][0][:1, :GENERATION_PROMPT]
    check = check_generation(artifact.path, model, prompt, artifact.tolerance or request.precision)
    detail = "; ".join(d for d in (numeric.detail, check.detail) if d)
    return replace(numeric, passed=numeric.passed and check.passed, detail=detail, generation=check.to_dict())


def score_artifact(ctx: Context, evaluation: Evaluation, predict: Callable | None = None) -> Accuracy:
    """Returns (and records) the accuracy: the workload's metric computed by the artifact.

    ``predict`` is the artifact's predictor when the caller holds one (a new one otherwise).
    Where the artifact cannot run here, the accuracy says so and has no drop: an accuracy
    budget is then unproven, for a search's candidate exactly as for the final build.
    """
    workload = ctx.workload
    recovery = evaluation.pruned.details.get("recovery") or {}
    common = {"metric": workload.metric, "inputs": workload.inputs,
              "before_recovery": recovery.get("metric_before"), "after_recovery": recovery.get("metric_after")}
    if workload.evaluate is None:
        accuracy = Accuracy(**common, note="the workload has no evaluate()")
    else:
        common.update(higher_is_better=workload.higher_is_better, baseline=ctx.baseline_metric())
        backend = get_backend(evaluation.artifact.format, evaluation.artifact.task)
        predict = predict or backend.predictor(evaluation.artifact)
        if predict is None:
            accuracy = Accuracy(**common, overall=ctx.baseline_score().overall,
                                note=f"not evaluated on the artifact: {backend.cannot_run_reason()}")
        else:
            scored = workload.score_slices(predict)
            accuracy = Accuracy(**common, pruned=scored.value,
                                drop=round(workload.drop(common["baseline"], scored.value), 6),
                                evaluated_on=evaluation.artifact.evaluated_on,
                                **slice_section(ctx.baseline_score(), scored, workload.higher_is_better,
                                                f"workload {workload.name}: evaluate()"))
    evaluation.accuracy = accuracy
    return accuracy
