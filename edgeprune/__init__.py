"""edgeprune: prune, quantize, lower, verify, measure and gate neural networks for edge devices."""

from edgeprune.errors import BudgetMissed, EdgepruneError, InputError, UnsupportedError

__all__ = [
    "BudgetMissed",
    "EdgepruneError",
    "InputError",
    "UnsupportedError",
    "Workload",
    "load_workload",
]
__version__ = "0.1.0"


def __getattr__(name: str):
    # The workload contract needs torch; importing it lazily keeps `edgeprune profiles ...` quick.
    if name in ("Workload", "load_workload"):
        from edgeprune import workload

        return getattr(workload, name)
    raise AttributeError(f"module 'edgeprune' has no attribute {name!r}")
