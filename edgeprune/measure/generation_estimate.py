"""How fast a decoder generates on a profile's device, estimated: decode from bandwidth, the prompt from compute.

A decode step reads every weight the step uses once (the projections, the LM head, one row of
the embeddings) and the KV cache up to its depth, and computes little: at batch 1 it is
memory-bound, so its time is those bytes over the profile's effective bandwidth, plus a fixed
cost per kernel. The prompt's pass computes 2 FLOPs per weight per token plus attention over
the prompt, and reads the weights once: compute-bound for long prompts. Both use the same
efficiencies as the CNN roofline (``efficiency.bandwidth``, ``compute_for``, the per-kernel
overhead), so a probed profile calibrates them alike.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgeprune.profile import Profile

# kernels one decoder block runs (norm, qkv, attention, o, skip-norm, gate, up, act, mul, down)
KERNELS_PER_BLOCK = 10


@dataclass(frozen=True)
class DecoderFacts:
    """What the estimate needs of a decoder: its widths and how many bytes each part stores."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_size: int
    vocab: int
    matmul_params: int
    weight_bytes: int  # bytes a decode step reads: every projection and the LM head (not the embedding table)
    kv_element_bytes: int
    compute_precision: str  # what the matmuls compute in: fp32, fp16, or int8 (int4/int8 weights, int8 arithmetic)
    weight_precision: str = "fp32"  # how the weights are stored: fp32, fp16, int8 or int4 blocks

    @classmethod
    def of(cls, details: dict) -> DecoderFacts:
        return cls(**{k: details[k] for k in cls.__dataclass_fields__})

    def kv_bytes(self, tokens: int) -> int:
        """Returns the key/value cache's bytes at ``tokens`` of context."""
        return 2 * self.layers * self.kv_heads * self.head_size * tokens * self.kv_element_bytes


@dataclass(frozen=True)
class GenerationEstimate:
    """Estimated prompt and decode speed at a context, and how the estimate was made."""

    prefill_tokens_per_s: float
    decode_tokens_per_s: float
    ttft_ms: float
    decode_ms: float
    bound: str

    def to_dict(self) -> dict:
        return {"prefill_tokens_per_s": round(self.prefill_tokens_per_s, 3),
                "decode_tokens_per_s": round(self.decode_tokens_per_s, 3), "ttft_ms": round(self.ttft_ms, 3),
                "decode_ms": round(self.decode_ms, 4), "bound": self.bound}


def decode_parts(facts: DecoderFacts, profile: Profile, depth: int) -> tuple[float, float, float]:
    """Returns one decode step at ``depth`` tokens of context as (weights, attention, overhead) seconds.

    The weights: their bytes over the bandwidth, or their products if those take longer;
    the attention over the cache at its own rate (or its bytes, if slower); a fixed cost per kernel.
    """
    eff = profile.efficiency
    memory_s = facts.weight_bytes / (profile.memory_bandwidth_gbs.value * 1e9 * eff.bandwidth_for(facts.weight_precision))
    weights_s = max(memory_s, 2 * facts.matmul_params / _rate(profile, facts))
    attention_s = max(4 * facts.layers * facts.heads * facts.head_size * depth / _attention_rate(profile, facts, "decode"),
                      facts.kv_bytes(depth) / (profile.memory_bandwidth_gbs.value * 1e9 * eff.bandwidth))
    return weights_s, attention_s, _overhead(facts, profile)


def prefill_parts(facts: DecoderFacts, profile: Profile, prompt: int) -> tuple[float, float, float]:
    """Returns the prompt's pass as (weights, attention, overhead) seconds: the products' FLOPs over their
    rate (or the weights' reads, if longer), the attention over the prompt, a fixed cost per kernel."""
    memory_s = (facts.weight_bytes + facts.kv_bytes(prompt)) / (
        profile.memory_bandwidth_gbs.value * 1e9 * profile.efficiency.bandwidth_for(facts.weight_precision))
    weights_s = max(2 * facts.matmul_params * prompt / _rate(profile, facts), memory_s)
    attention_s = 2 * facts.layers * facts.heads * facts.head_size * prompt * prompt / _attention_rate(
        profile, facts, "prompt")
    return weights_s, attention_s, _overhead(facts, profile)


def _overhead(facts: DecoderFacts, profile: Profile) -> float:
    return (facts.layers * KERNELS_PER_BLOCK + 2) * profile.efficiency.overhead_us_for(facts.compute_precision) * 1e-6


def estimate_generation(facts: DecoderFacts, profile: Profile, prompt: int, generate: int) -> GenerationEstimate:
    """Returns the estimated pp{prompt} and tg{generate} on the profile's device (tg at the mean depth)."""
    prefill = sum(prefill_parts(facts, profile, prompt))
    steps = [sum(decode_parts(facts, profile, prompt + i)) for i in range(generate)]
    decode = sum(steps)
    memory_bound = facts.weight_bytes / (profile.memory_bandwidth_gbs.value * 1e9 *
                                         profile.efficiency.bandwidth_for(facts.weight_precision))
    bound = "memory" if memory_bound >= (2 * facts.matmul_params) / _rate(profile, facts) else "compute"
    return GenerationEstimate(prompt / prefill, generate / decode, prefill * 1e3, decode / generate * 1e3, bound)


def _attention_rate(profile: Profile, facts: DecoderFacts, mode: str) -> float:
    """Returns the FLOP/s of a decoder's attention (decoding one token, or over a prompt): the probed share of
    the compute precision's peak where a probe timed it, else the compute efficiency's."""
    precision = facts.compute_precision if facts.compute_precision in profile.compute else "fp32"
    if precision not in profile.compute:
        precision = next(iter(profile.compute))
    share = profile.efficiency.attention.get(mode, profile.efficiency.compute_for(precision))
    return profile.peak_tops(precision) * 1e12 * share


def _rate(profile: Profile, facts: DecoderFacts) -> float:
    """Returns the effective operations per second of the decoder's products on the profile (peak x efficiency).

    Weights stored in blocks compute at the rate the profile states for them where a probe
    timed that operator (``compute.int4``); elsewhere at the arithmetic's own precision's rate.
    """
    precision = facts.weight_precision if facts.weight_precision in profile.compute else facts.compute_precision
    if precision not in profile.compute:
        precision = "fp16" if "fp16" in profile.compute and not profile.is_cpu else "fp32"
    return profile.peak_tops(precision) * 1e12 * profile.efficiency.compute_for(precision)
