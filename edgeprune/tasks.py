"""What kind of workload a model is, decided once when the Workload is made.

``causal-lm`` is a transformers causal LM (or a model wrapping one, however the user wrapped
it): it is pruned block by block (edgeprune.llm), shipped as a decoder with a KV cache and
measured in tokens per second. ``classification`` scores top-1 agreement when verifying;
``other`` is any other model (a hand-written decoder, a regressor), pruned by the general
engines and verified by its outputs' difference alone.
"""

from __future__ import annotations

import sys

CLASSIFICATION = "classification"
CAUSAL_LM = "causal-lm"
OTHER = "other"
TASKS = (CLASSIFICATION, CAUSAL_LM, OTHER)


def find_causal_lm(model: object) -> tuple[str, object] | None:
    """Returns (qualified name, module) of the transformers causal LM a model is or wraps, or None.

    A user's own ``nn.Module`` around a Hugging Face LM (a logits adapter, a head on top) is
    found too, the shallowest LM first. transformers is not imported for this: a model built
    from it has already imported it.
    """
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


def resolve_task(model: object, task: str | None) -> str:
    """Returns the workload's task: ``causal-lm`` whenever the model holds a transformers causal LM,
    else the one given (``classification`` when none).

    ValueError for a task edgeprune does not know, or ``causal-lm`` for a model holding no
    transformers causal LM (a hand-written decoder is ``other``: the general engines prune it).
    """
    if task is not None and task not in TASKS:
        raise ValueError(f"Workload.task must be one of {', '.join(TASKS)}, got {task!r}")
    if find_causal_lm(model) is not None:
        return CAUSAL_LM
    if task == CAUSAL_LM:
        raise ValueError("Workload.task 'causal-lm' needs a transformers causal LM in the model (block-wise pruning, "
                         "a KV-cache decoder); a hand-written decoder is task 'other'")
    return task or CLASSIFICATION
