"""edgeprune: prune, quantize, lower, verify, measure and gate neural networks for edge devices.

The Python API (``edgeprune.build``, ``plan``, ``sweep``, ``load_target``) is what the
command line calls; see edgeprune.api.
"""

from edgeprune.errors import BudgetMissed, EdgepruneError, InputError, UnsupportedError

__all__ = [
    "BudgetMissed",
    "Budgets",
    "BuildOptions",
    "EdgepruneError",
    "InputError",
    "Report",
    "UnsupportedError",
    "Workload",
    "build",
    "load_target",
    "load_workload",
    "plan",
    "sweep",
]
__version__ = "0.1.0"

# Imported on first use: the workload contract and the pipeline need torch, and importing
# them lazily keeps `edgeprune profiles ...` quick.
_LAZY = {
    "Workload": "edgeprune.workload", "load_workload": "edgeprune.specs",
    "build": "edgeprune.api", "plan": "edgeprune.api", "sweep": "edgeprune.api", "load_target": "edgeprune.api",
    "BuildOptions": "edgeprune.target", "Budgets": "edgeprune.gate", "Report": "edgeprune.report",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'edgeprune' has no attribute {name!r}")
