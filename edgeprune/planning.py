"""The plan: what the build will do to the model for a device, and why, in plain words."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from edgeprune import vocabulary
from edgeprune.backends import get_backend
from edgeprune.backends.base import LowerRequest, serves_task
from edgeprune.errors import InputError
from edgeprune.gate import Budgets
from edgeprune.layers import Layer, inventory
from edgeprune.profile import Profile
from edgeprune.prune.config import parse_nm
from edgeprune.tasks import CAUSAL_LM
from edgeprune.vocabulary import AUTO, MAX_RECOVER_STEPS
from edgeprune.workload import Workload

STRATEGIES = (AUTO, *vocabulary.STRATEGIES)
QUANTIZE = (AUTO, *vocabulary.QUANTIZE)
# 2:4 pays only when most of the arithmetic sits in layers a sparse kernel accelerates.
NM_MIN_MAC_SHARE = 0.5
# Above this share of parameters in embeddings, a transformer's size is its vocabulary.
EMBEDDING_HEAVY_SHARE = 0.3


@dataclass(frozen=True)
class Plan:
    """Strategy, sparsity, quantization and format, with the reasons in plain words.

    ``sparsity`` is the amount to build with; ``search`` is the (low, high) range the
    budget-driven search may move it in (None when the amount is fixed). ``recover`` is
    the distillation steps after pruning; ``palettize`` the lookup-table weight bits of the
    lowering (Core ML). A plan is everything one evaluation of the model needs.
    """

    kind: str
    sparsity: float
    quantization: str
    format: str
    precision: str
    criterion: str | None = None
    nm: tuple[int, int] | None = None
    recover: int = 0
    palettize: int | None = None
    reasons: tuple[str, ...] = ()
    search: tuple[float, float] | None = None
    quantize_candidates: tuple[str, ...] = ()
    details: dict = field(default_factory=dict)
    task: str = "classification"

    def to_dict(self) -> dict:
        out = asdict(self)
        out["reasons"] = list(self.reasons)
        out["nm"] = f"{self.nm[0]}:{self.nm[1]}" if self.nm else None
        out["search"] = list(self.search) if self.search else None
        out["quantize_candidates"] = list(self.quantize_candidates)
        return out

    @property
    def prunes(self) -> bool:
        """Whether the plan changes the model (N:M prunes at any amount; the rest above 0)."""
        return self.kind != "none" and (self.sparsity > 0.0 or self.kind == "nm")

    def lower_request(self, profile: Profile, calibration, options: dict | None = None) -> LowerRequest:
        """Returns what the backend is asked to lower: precision, the zeros to store, palettization.

        ``options`` are what the workload gives the backend beyond the model (a causal LM's
        tokenizer and the context its decoder is written for).
        """
        return LowerRequest(precision=self.precision, profile=profile, calibration=calibration,
                            sparsity=self.kind, nm=self.nm or (2, 4), palettize=self.palettize,
                            options=dict(options or {}))

    def backend(self):
        """Returns the backend that lowers this plan: the format's, or the workload kind's own."""
        return get_backend(self.format, self.task)

    def strategy_section(self) -> dict:
        """Returns the report's ``strategy`` object for this plan."""
        d = self.to_dict()
        keys = ("kind", "sparsity", "quantization", "criterion", "nm", "reasons", "search", "details")
        return {k: d[k] for k in keys}


def precision_for(quantize: str, fmt: str) -> str:
    """Returns the artifact precision a --quantize value means for a format."""
    if quantize == "none":
        # Core ML computes in fp16 by default; the others keep the model's fp32.
        return "fp16" if fmt == "coreml" else "fp32"
    return quantize


def resolve_format(fmt: str, profile: Profile) -> str:
    """Returns the concrete format: the profile's preferred runtime for 'auto'."""
    if fmt == "auto":
        return profile.preferred_format
    if fmt not in profile.formats:
        raise InputError(
            f"profile {profile.name} does not run format {fmt!r} (its formats: {', '.join(profile.formats)})"
        )
    return fmt


def recommended_quantization(profile: Profile, fmt: str) -> tuple[str, str]:
    """Returns (precision, reason) the profile's hardware runs fastest, or ('none', reason)."""
    backend = get_backend(fmt)
    if "int8" in profile.precisions and profile.is_cpu and backend.computes_int8:
        fp32 = profile.peak_tops("fp32")
        int8 = profile.peak_tops("int8")
        kind = "U8 activations x S8 weights" if profile.int8_activation == "u8" else "S8 x S8"
        return "int8", (f"int8 ({kind}) runs {int8 / fp32:.1f}x the fp32 peak on {profile.name} "
                        f"({profile.compute['int8'].source})")
    if "fp16" in profile.precisions and not profile.is_cpu:
        fp32 = profile.compute.get("fp32")
        if fp32 is None:
            return "fp16", f"{profile.name} computes in fp16 ({profile.compute['fp16'].source})"
        return "fp16", (f"fp16 tensor cores run {profile.peak_tops('fp16') / fp32.dense_tops:.0f}x the fp32 "
                        f"rate on {profile.name} ({profile.compute['fp16'].source})")
    return "none", f"{profile.name} gains nothing from a lower precision it lists"


def llm_quantization(profile: Profile, fmt: str) -> tuple[tuple[str, ...], str]:
    """Returns (the precisions a causal LM's search tries, why): decode reads every weight once a token."""
    backend = get_backend(fmt, CAUSAL_LM)
    lower = tuple(p for p in ("int8", "int4") if p in profile.precisions and p in backend.precisions)
    if not lower:
        return ("none",), f"{profile.name} lists no int8 or int4 weights for {fmt}"
    return ("none", *lower), (f"decode reads every weight once a token (memory-bound at batch 1): {' and '.join(lower)} "
                              f"weights read about {32 / (4.5 if lower[-1] == 'int4' else 8.25):.0f}x fewer bytes "
                              f"than fp32; tried with the width")


def choose_strategy(layers: list[Layer], profile: Profile, budgets: Budgets, fmt: str) -> tuple[str, list[str], dict]:
    """Returns (kind, reasons, details): the pruning the device can turn into its goal."""
    weighted = [layer for layer in layers if layer.kind != "embedding"]
    total_macs = sum(layer.macs for layer in weighted) or 1
    total_params = sum(layer.params for layer in layers) or 1
    embedding_share = sum(layer.params for layer in layers if layer.kind == "embedding") / total_params
    has_attention = any(layer.kind == "attention" for layer in layers) or embedding_share > 0
    details: dict = {"layers": len(weighted), "embedding_param_share": round(embedding_share, 3)}
    reasons: list[str] = []

    nm = profile.sparsity.nm
    if nm is not None:
        eligible = [layer for layer in weighted if layer.nm_eligible(nm.min_channels)]
        share = sum(layer.macs for layer in eligible) / total_macs
        details.update({"nm_eligible_layers": len(eligible), "nm_eligible_mac_share": round(share, 3)})
        if share >= NM_MIN_MAC_SHARE:
            reasons.append(f"{profile.name} runs {nm.pattern} sparsity on sparse tensor cores ({nm.source})")
            reasons.append(f"{len(eligible)} of {len(weighted)} layers, {share:.0%} of the MACs, are at least "
                           f"{nm.min_channels} channels wide and take {nm.pattern}; the other "
                           f"{len(weighted) - len(eligible)} stay dense")
            return "nm", reasons, details
        reasons.append(f"{nm.pattern} would cover only {share:.0%} of the MACs: layers under "
                       f"{nm.min_channels} channels gain nothing from sparse kernels")

    if budgets.max_size_mb is not None and not budgets.on_latency() and profile.sparsity.unstructured \
            and fmt == "coreml":
        reasons.append("the budget is on size, not speed: unstructured sparsity keeps the most accuracy per "
                       "byte, and Core ML stores it as sparse weights")
        return "unstructured", reasons, details

    if has_attention and embedding_share >= EMBEDDING_HEAVY_SHARE:
        reasons.append(f"embeddings hold {embedding_share:.0%} of the parameters: hybrid prunes MLP blocks "
                       "structurally (speed) and embeddings/attention projections unstructured (size)")
        return "hybrid", reasons, details

    un = profile.sparsity.unstructured
    if un is not None:
        reasons.append(f"{profile.name} skips zeros only above {un.min_sparsity:.0%} unstructured sparsity "
                       f"({un.source}); below that only fewer channels are faster")
    elif nm is not None:
        reasons.append("structured pruning instead: fewer channels are faster on any kernel")
    else:
        reasons.append(f"{profile.name} runs dense kernels ({profile.sparsity.source}): only fewer channels "
                       "make it faster, so structured pruning")
    return "structured", reasons, details


def make_plan(
    workload: Workload,
    profile: Profile,
    strategy: str = "auto",
    sparsity: float | None = None,
    quantize: str = "auto",
    fmt: str = "auto",
    criterion: str | None = None,
    nm: str = "2:4",
    budgets: Budgets | None = None,
    recover: int = 0,
    palettize: int | None = None,
) -> Plan:
    """Returns the plan for building a workload for a profile with the requested knobs.

    With ``strategy='auto'`` the kind follows from the profile and the model's layers; the
    amount follows from the budgets (a search range when there is a latency or size budget,
    nothing to prune when there is none).
    """
    budgets = budgets or Budgets()
    if strategy not in STRATEGIES:
        raise InputError(f"unknown strategy {strategy!r}; strategies: {', '.join(STRATEGIES)}")
    if quantize not in QUANTIZE:
        raise InputError(f"unknown --quantize {quantize!r}; choose one of: {', '.join(QUANTIZE)}")
    if sparsity is not None and (isinstance(sparsity, bool) or not isinstance(sparsity, (int, float))
                                 or not 0.0 <= sparsity < 1.0):
        raise InputError(f"--sparsity must be in [0, 1), got {sparsity}")
    reasons: list[str] = []
    if fmt == "auto" and workload.is_causal_lm and not serves_task(profile.preferred_format, CAUSAL_LM):
        decoders = [f for f in profile.formats if serves_task(f, CAUSAL_LM)]
        if decoders:
            reasons.append(f"format {decoders[0]}: a causal LM ships as a decoder with a KV cache, which edgeprune "
                           f"writes for {', '.join(decoders)}, not for {profile.preferred_format}")
            fmt = decoders[0]
    fmt = resolve_format(fmt, profile)
    details: dict = {}
    kind = strategy
    search: tuple[float, float] | None = None

    recommended, why_quant = recommended_quantization(profile, fmt)
    if precision_for(recommended, fmt) == precision_for("none", fmt):
        recommended, why_quant = "none", f"{fmt} already computes in {precision_for('none', fmt)} on {profile.name}"
    if quantize == "auto" and workload.is_causal_lm:
        candidates, why_quant = llm_quantization(profile, fmt)
        quantize = "none"
        reasons.append(f"quantization: {why_quant}")
    elif quantize == "auto":
        candidates = ("none",) if recommended == "none" else ("none", recommended)
        quantize = "none"
        reasons.append(f"quantization: {why_quant}" + ("; tried when pruning alone misses the budget"
                                                       if len(candidates) > 1 else ""))
    else:
        candidates = (quantize,)

    nm_pair = parse_nm(nm) if strategy in ("auto", "nm") else None
    if strategy == "auto":
        kind, why, details = choose_strategy(inventory(workload.model, workload.example_inputs), profile, budgets, fmt)
        reasons += why
        if kind == "hybrid" and workload.is_causal_lm:
            kind = "structured"
            reasons.append("a causal LM's embeddings and LM head shrink with its hidden width, which width "
                           "pruning removes (structured) instead of zeroing them")
        if kind == "nm" and workload.is_causal_lm:
            kind = "structured"
            reasons.append(f"not 2:4: decoding a token is memory-bound, and no measured decode speed-up from 2:4 "
                           f"exists for {profile.name} (TensorRT-LLM users report none; PyTorch's 2:4 tutorial "
                           "measured decode 12% slower); fewer channels read fewer bytes, so width pruning")
        if kind in ("structured", "hybrid") and workload.graph_only:
            kind = "none"
            reasons.append("a torch.export program has no layer modules to narrow, so it is not pruned "
                           "(--strategy unstructured or nm prunes its weights)")
        nm_pair = nm_pair if kind == "nm" else None
        top = 1 - nm_pair[0] / nm_pair[1] if nm_pair else (0.8 if kind == "structured" else 0.9)
        if sparsity is None:
            if kind == "none":
                sparsity = 0.0
            elif not budgets.on_latency() and budgets.max_size_mb is None:
                sparsity = 0.0
                reasons.append("no latency or size budget: nothing to prune for, the model stays dense")
            else:
                search = (0.0, top)
                reasons.append("the amount is searched: the least pruning that meets the budgets")
    elif kind in ("structured", "unstructured", "hybrid") and sparsity is None:
        raise InputError(f"--strategy {kind} needs --sparsity S (the fraction to remove, in [0, 1))")
    if kind == "nm" and strategy == "nm":
        amount = 1 - nm_pair[0] / nm_pair[1]
    else:
        amount = float(sparsity or 0.0)
    if kind == "nm" and workload.is_causal_lm:
        reasons.append(f"{nm_pair[0]}:{nm_pair[1]} on a causal LM is reported as size and accuracy only: no measured "
                       f"decode speed-up from it exists for {profile.name}")
    return Plan(
        kind=kind, sparsity=amount, quantization=quantize, format=fmt,
        precision=precision_for(quantize, fmt), criterion=criterion, nm=nm_pair,
        recover=_steps(recover), palettize=palettize, reasons=tuple(reasons),
        search=search, quantize_candidates=candidates, details=details, task=workload.task,
    )


def _steps(recover) -> int:
    if isinstance(recover, bool) or not isinstance(recover, int) or not 0 <= recover <= MAX_RECOVER_STEPS:
        raise InputError(f"--recover must be a whole number of steps from 0 to {MAX_RECOVER_STEPS}, got {recover!r}")
    return recover
