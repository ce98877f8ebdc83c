"""The names users type, each list kept once: pruning strategies, quantizations and artifact formats.

Formats are the profile schema's (every registered backend serves one); the CLI builds its
choices from these, and the planner and pruning configs validate against them.
"""

from __future__ import annotations

from typing import get_args

from edgeprune.precision import QUANTIZE  # noqa: F401  (the --quantize choices, kept with the precisions)
from edgeprune.profile import Format

STRATEGIES = ("none", "structured", "unstructured", "nm", "hybrid")
FORMATS = get_args(Format)
AUTO = "auto"
# A model argument naming a Hugging Face model directory: hf:path/to/dir
HF_PREFIX = "hf:"
# model libraries whose models are one argument away: timm:NAME, torchvision:NAME
LIBRARY_PREFIXES = ("timm:", "torchvision:")
# Distillation steps a build may spend (each a forward and backward pass of both models).
MAX_RECOVER_STEPS = 100_000
# The longest prompt or generation a causal LM's build measures, in tokens.
MAX_CONTEXT = 131_072
