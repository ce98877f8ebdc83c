"""Access to the optional Hugging Face transformers dependency (the ``edgeprune[llm]`` extra)."""

from __future__ import annotations

from types import ModuleType

from edgeprune.errors import InputError, first_line


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


def from_folder(loader, folder, what: str, **kwargs):
    """Returns ``loader.from_pretrained(folder, **kwargs)``; InputError in one line naming the folder for
    whatever a damaged or inconsistent checkpoint makes transformers, tokenizers or safetensors raise
    (a truncated or malformed safetensors file, a config of the wrong types, weights of other shapes).

    transformers' own load report (a table logged before it raises) is kept out of the terminal;
    its first mismatched weight goes into the one line instead. What it logs on a load that
    succeeds is passed on as it would have been.
    """
    import logging

    log = logging.getLogger("transformers")
    kept: list[logging.LogRecord] = []
    collect = logging.Handler()
    collect.emit = kept.append
    handlers, propagate = log.handlers[:], log.propagate
    log.handlers, log.propagate = [collect], False
    try:
        loaded = loader.from_pretrained(str(folder), **kwargs)
    except Exception as exc:  # each library raises its own types for a bad file
        mismatch = next((line for r in kept for line in r.getMessage().splitlines() if "MISMATCH" in line), None)
        if mismatch is not None:
            cells = [c.strip() for c in mismatch.split("|")]
            raise InputError(f"cannot load {what} from {folder}: its weights do not have the shapes its config.json "
                             f"gives: {cells[0]}: {cells[-1].removeprefix('Reinit due to size mismatch - ')}"[:400]
                             ) from None
        raise InputError(f"cannot load {what} from {folder}: {first_line(exc, named=True)}") from None
    finally:
        log.handlers, log.propagate = handlers, propagate
    for record in kept:
        log.handle(record)
    return loaded
