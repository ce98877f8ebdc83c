"""The generation stage of an LLM build: tokens per second, time to first token and memory at a context.

A decoder is measured as it runs: in a process of its own (``decode_loop``) that loads it,
processes a ``prompt_tokens`` prompt in one pass and generates ``generate_tokens`` tokens one
at a time from the KV cache, so the peak resident memory it reports is the runtime's with the
model at that context. The final build runs the artifact and the dense fp32 decoder in
alternating processes, side by side, and repeats; a search's candidate is timed once. With
no device here the figures are estimated from the profile (``generation_estimate``) and
labelled so. The build's latency is the per-token decode latency at that context.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgeprune.backends import Artifact
from edgeprune.device.decode_loop import side_by_side
from edgeprune.device.protocol import Device
from edgeprune.errors import EdgepruneError
from edgeprune.measure.estimate import estimate_swing
from edgeprune.measure.generation_estimate import (
    DecoderFacts,
    GenerationEstimate,
    estimate_generation,
)
from edgeprune.measure.local import StandIn, local_device
from edgeprune.measurements import ESTIMATED, MEASURED, UNAVAILABLE, Generation, Latency, Memory
from edgeprune.profile import Profile
from edgeprune.uploads import UploadModel

MEMORY_METHOD = ("measured: peak resident memory (VmHWM) of a process that loaded the decoder with ONNX Runtime, "
                 "processed the prompt and generated the tokens")
ESTIMATED_MEMORY = "estimated: the decoder's stored weights plus its KV cache at the context (the runtime excluded)"


@dataclass(frozen=True)
class GenerationSettings:
    """The context a decoder is measured at: a prompt processed in one pass, then tokens generated one by one."""

    prompt_tokens: int = 512
    generate_tokens: int = 128
    repeats: int = 3

    @property
    def context(self) -> int:
        return self.prompt_tokens + self.generate_tokens


def measure_here(artifact: Artifact, baseline: Artifact | None, settings: GenerationSettings, here: StandIn,
                 final: bool) -> tuple[dict, dict | None]:
    """Returns the artifact's figures (and the baseline's) from decode_loop processes run in turn.

    Final: ``settings.repeats`` rounds, each one process of the artifact then one of the
    baseline, so load on the machine hits both alike; the medians of the rounds count, and
    the peak memory is the largest any artifact process reached. Otherwise one process.
    """
    folders = {"artifact": artifact.path, **({"baseline": baseline.path} if final and baseline is not None else {})}
    try:
        figures = side_by_side(folders, settings.prompt_tokens, settings.generate_tokens, here.threads,
                               settings.repeats if final else 1)
    except RuntimeError as exc:
        raise EdgepruneError(str(exc)) from None
    return figures["artifact"], figures.get("baseline")


def measure_on_agent(agent: Device, artifact: Artifact, baseline: Artifact | None, settings: GenerationSettings,
                     threads: int | None, final: bool) -> tuple[dict, dict | None, dict]:
    """Returns the artifact's figures (and the baseline's) measured on the device by its agent, and the reply."""
    models = [UploadModel("artifact", "decoder", artifact.path, None, artifact.precision)]
    if final and baseline is not None:
        models.append(UploadModel("baseline", "decoder", baseline.path, None, baseline.precision))
    reply = agent.measure_generation(models, settings.prompt_tokens, settings.generate_tokens,
                                     settings.repeats if final else 1, threads)
    return reply["results"]["artifact"], reply["results"].get("baseline"), reply


def generation_of(profile: Profile, artifact: Artifact, baseline: Artifact | None, settings: GenerationSettings,
                  here: StandIn, final: bool, reason: str | None,
                  agent: Device | None = None) -> tuple[Latency, Memory, Generation]:
    """Returns the decode latency, the memory at the context and the generation figures of a decoder.

    Measured on the device by its agent (``agent``), or here when this machine stands in for
    the profile's device (``reason`` None), else estimated from the profile; the estimate is
    reported beside every measurement.
    """
    facts = DecoderFacts.of(artifact.details["decoder"])
    est = estimate_generation(facts, profile, settings.prompt_tokens, settings.generate_tokens)
    base_est = (estimate_generation(DecoderFacts.of(baseline.details["decoder"]), profile, settings.prompt_tokens,
                                    settings.generate_tokens) if baseline is not None else None)
    kv_mb = round(facts.kv_bytes(settings.context) / 1e6, 3)
    weights_mb = round(artifact.size_bytes / 1e6, 3)
    common = {"prompt_tokens": settings.prompt_tokens, "generated_tokens": settings.generate_tokens,
              "estimated_prefill_tokens_per_s": round(est.prefill_tokens_per_s, 3),
              "estimated_decode_tokens_per_s": round(est.decode_tokens_per_s, 3),
              "estimated_ttft_ms": round(est.ttft_ms, 3), "estimate": _estimate_section(est, profile, facts)}
    note = (f"per-token decode latency after a {settings.prompt_tokens}-token prompt, over "
            f"{settings.generate_tokens} generated tokens")
    if agent is not None or reason is None:
        if agent is not None:
            mine, base, reply = measure_on_agent(agent, artifact, baseline, settings, here.threads, final)
            device, where = reply["device"], {"agent": reply["agent"], "threads": reply.get("threads")}
        else:
            mine, base = measure_here(artifact, baseline, settings, here, final)
            device, where = local_device(here.host), {"host": here.host, "stands_in": here.reason,
                                                      "threads": here.threads}
        generation = Generation(
            MEASURED, device, **common, prefill_tokens_per_s=round(mine["prefill_tokens_per_s"], 3),
            decode_tokens_per_s=round(mine["decode_tokens_per_s"], 3), ttft_ms=round(mine["ttft_ms"], 3),
            decode_ms_median=round(mine["decode_ms_median"], 4), decode_ms_p90=round(mine["decode_ms_p90"], 4),
            load_s=round(mine["load_s"], 3), repeats=mine["repeats"], spread=round(mine["spread"], 4),
            runtime=mine["runtime"], **where,
            estimate_error={"prefill": round(est.prefill_tokens_per_s / mine["prefill_tokens_per_s"] - 1, 4),
                            "decode": round(est.decode_tokens_per_s / mine["decode_tokens_per_s"] - 1, 4)})
        latency = Latency(
            MEASURED, generation.device, median_ms=generation.decode_ms_median, p90_ms=generation.decode_ms_p90,
            spread=generation.spread, runs=settings.generate_tokens * mine["repeats"], runtime=mine["runtime"],
            **where, estimated_ms=round(est.decode_ms, 4),
            estimate_error=round(est.decode_ms / mine["decode_ms_median"] - 1, 4), note=note,
            **_baseline(base, base_est, generation.decode_ms_median))
        memory = Memory(MEASURED, peak_mb=round(mine["peak_rss_bytes"] / 1e6, 3), weights_mb=weights_mb,
                        kv_cache_mb=kv_mb, context_tokens=settings.context, method=MEMORY_METHOD)
        return latency, memory, generation
    device = f"{profile.name}: {profile.description}"
    why = f"estimated from profile {profile.name}, not measured: {reason}"
    spread, swung = estimate_swing(profile)
    generation = Generation(ESTIMATED, device, **common, prefill_tokens_per_s=round(est.prefill_tokens_per_s, 3),
                            decode_tokens_per_s=round(est.decode_tokens_per_s, 3), ttft_ms=round(est.ttft_ms, 3),
                            decode_ms_median=round(est.decode_ms, 4), decode_ms_p90=round(est.decode_ms, 4),
                            spread=spread, note=f"{why}; {swung}".removesuffix("; "))
    latency = Latency(ESTIMATED, device, median_ms=round(est.decode_ms, 4), p90_ms=round(est.decode_ms, 4),
                      estimated_ms=round(est.decode_ms, 4), spread=spread, note=f"{why}; {swung}{note}",
                      **_baseline(None, base_est, est.decode_ms))
    memory = Memory(ESTIMATED, peak_mb=round(weights_mb + kv_mb, 3), weights_mb=weights_mb, kv_cache_mb=kv_mb,
                    context_tokens=settings.context, method=ESTIMATED_MEMORY)
    return latency, memory, generation


def unavailable(artifact: Artifact, settings: GenerationSettings, why: str) -> Generation:
    """Returns the generation section of an artifact that cannot generate incrementally (no KV cache)."""
    return Generation(UNAVAILABLE, artifact.format, settings.prompt_tokens, settings.generate_tokens, note=why)


def _baseline(measured: dict | None, estimate: GenerationEstimate | None, mine_ms: float) -> dict:
    """Returns the Latency fields of the dense decoder's decode latency: measured beside the artifact, or estimated."""
    if measured is not None:
        base = measured["decode_ms_median"]
        return {"baseline_median_ms": round(base, 4), "baseline_p90_ms": round(measured["decode_ms_p90"], 4),
                "baseline_spread": round(measured["spread"], 4), "speedup": round(base / mine_ms, 4),
                "baseline_estimated_ms": round(estimate.decode_ms, 4) if estimate else None}
    if estimate is not None:
        return {"baseline_median_ms": round(estimate.decode_ms, 4), "baseline_p90_ms": round(estimate.decode_ms, 4),
                "baseline_estimated_ms": round(estimate.decode_ms, 4), "speedup": round(estimate.decode_ms / mine_ms, 4)}
    return {}


def _estimate_section(est: GenerationEstimate, profile: Profile, facts: DecoderFacts) -> dict:
    return {**est.to_dict(), "profile": profile.name, "weight_bytes_per_token": facts.weight_bytes,
            "bandwidth_gbs": profile.memory_bandwidth_gbs.value, "bandwidth_efficiency": profile.efficiency.bandwidth,
            "compute_precision": facts.compute_precision,
            "method": "decode: (weights + KV cache read per token) / (bandwidth x efficiency) + per-kernel overhead; "
                      "prompt: FLOPs / (peak x efficiency), or its weight reads, whichever is longer"}
