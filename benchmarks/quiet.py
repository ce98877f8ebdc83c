"""A shared host's quiet rounds: which rounds of a model ran while the host was not in a slow spell.

On a host whose speed switches over seconds (a virtual machine's vCPUs handing work between them), a chain of
kernels split over the threads, timed last in every cycle of rounds beside a model, shows which state the host
was in: a model's round between two of the chain's rounds that ran near the chain's fastest ran while quiet.
"""

from __future__ import annotations

from edgeprune.gate import ESTIMATE_ERROR_BOUND
from edgeprune.timing import quiet_rounds

# a round is quiet when the hand-off chain timed on either side of it ran within this of its fastest round in the
# run, the swing above which `profiles probe` calls a host unsteady: its slow spells slow that chain by half or
# more, its quiet rounds stay within a few percent
QUIET = ESTIMATE_ERROR_BOUND
QUIET_TRIES = 4  # times a model with fewer than edgeprune.timing.MIN_QUIET_ROUNDS is timed again for its quiet rounds


def quiet_limit(chain: dict[str, list[list[float]]]) -> float:
    """Returns the slowest a round of the hand-off chain may run for the host to count as quiet: within QUIET of
    its fastest round in the run."""
    return min(min(min(p) for p in v) for v in chain.values()) * (1 + QUIET)


def quiet_runs(passes: list[list[list[float]]], chain: list[list[float]], quiet_ms: float) -> tuple[list, int]:
    """Returns (the rounds of a row that ran while the host was quiet, how many rounds it ran in all), from its
    rounds in each timing and the hand-off chain's round medians beside them (``edgeprune.timing.quiet_rounds``)."""
    quiet = [rounds[i] for rounds, handoff in zip(passes, chain, strict=True) for i in quiet_rounds(handoff, quiet_ms)]
    return quiet, sum(len(rounds) for rounds in passes)
