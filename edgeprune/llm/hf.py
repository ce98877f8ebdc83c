"""Access to the optional Hugging Face transformers dependency (the ``edgeprune[llm]`` extra)."""

from __future__ import annotations

from types import ModuleType

from edgeprune.errors import InputError


def transformers() -> ModuleType:
    """Returns the transformers module, or raises InputError naming the extra to install."""
    try:
        import transformers as module
    except ImportError as exc:
        raise InputError(
            "LLM pruning needs Hugging Face transformers: pip install edgeprune[llm]"
        ) from exc
    # progress bars of loading and saving shards would interleave with the build's own steps
    module.utils.logging.disable_progress_bar()
    return module
