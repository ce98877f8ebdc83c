"""edgeprune: prune, quantize, lower, verify, measure and gate neural networks for edge devices."""

from edgeprune.errors import BudgetMissed, EdgepruneError, InputError, UnsupportedError
from edgeprune.workload import Workload, load_workload

__all__ = [
    "BudgetMissed",
    "EdgepruneError",
    "InputError",
    "UnsupportedError",
    "Workload",
    "load_workload",
]
__version__ = "0.1.0"
