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


def find_causal_lm(model: object) -> tuple[str, object] | None:
    """Returns (qualified name, module) of the transformers causal LM a model is or wraps, or None.

    A user's own ``nn.Module`` around a Hugging Face LM (a logits adapter, a head on top) is
    found too, the shallowest LM first. transformers is not imported for this: a model built
    from it has already imported it.
    """
    import sys

    if "transformers" not in sys.modules or not hasattr(model, "named_modules"):
        return None
    for name, module in model.named_modules():
        if is_causal_lm(module):
            return name, module
    return None


def is_causal_lm(model: object) -> bool:
    """Returns whether ``model`` is a transformers model with a language-modelling head."""
    try:
        from transformers import PreTrainedModel
    except ImportError:
        return False
    return isinstance(model, PreTrainedModel) and model.get_output_embeddings() is not None

