"""Causal-LM workloads: a Hugging Face model directory, calibration text and held-out perplexity."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from edgeprune.errors import InputError
from edgeprune.llm.logits import CausalLMLogits
from edgeprune.llm.save import load_causal_lm
from edgeprune.llm.text import pydoc_corpus, read_text, split_text
from edgeprune.workload import Workload


def tokenize(tokenizer, text: str) -> torch.Tensor:
    """Returns the text's token ids as one 1-D tensor (no special tokens added)."""
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def token_windows(ids: torch.Tensor, seq_len: int, limit: int | None = None) -> torch.Tensor:
    """Returns consecutive, non-overlapping windows of ``seq_len`` tokens, (count, seq_len)."""
    count = len(ids) // seq_len
    if limit is not None:
        count = min(count, limit)
    return ids[: count * seq_len].view(count, seq_len)


def sample_windows(ids: torch.Tensor, seq_len: int, count: int, seed: int = 0) -> torch.Tensor:
    """Returns ``count`` windows of ``seq_len`` tokens at random offsets (fixed by ``seed``)."""
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(ids) - seq_len + 1, (count,), generator=generator)
    return torch.stack([ids[s : s + seq_len] for s in starts.tolist()])


@torch.no_grad()
def perplexity(predict: Callable[..., torch.Tensor], windows: torch.Tensor, batch_size: int = 8) -> float:
    """Returns exp(mean next-token negative log-likelihood) of ``predict`` over the windows.

    Each window is scored on its own: position t predicts token t + 1 from tokens 0..t.
    """
    total_nll = 0.0
    total_tokens = 0
    for start in range(0, len(windows), batch_size):
        ids = windows[start : start + batch_size]
        logits = predict(ids).float()
        nll = F.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="sum"
        )
        total_nll += float(nll)
        total_tokens += ids[:, 1:].numel()
    return math.exp(total_nll / total_tokens)


def causal_lm_workload(
    path: str | Path,
    text: str | Path | None = None,
    seq_len: int = 128,
    samples: int = 32,
    *,
    eval_samples: int | None = 128,
    finetune_samples: int = 256,
    name: str | None = None,
) -> Workload:
    """Returns a Workload for the Hugging Face causal LM saved in the directory ``path``.

    text: a UTF-8 text file whose last tenth is held out for perplexity and whose rest gives
        calibration and fine-tuning windows; by default the interpreter's own help topics
        (``pydoc_data.topics``), split by topic.
    seq_len: tokens per sequence, pinned: calibration, evaluation and the exported model's
        input all use it.
    samples: calibration sequences, drawn at random offsets of the training text.
    eval_samples: held-out windows scored by ``evaluate`` (None: all of them).

    The Workload's model maps ``input_ids`` (batch, seq_len) to logits; its metric is
    perplexity (lower is better); ``extras`` holds the source directory, the tokenizer and
    the sequence length so the pruned model can be saved as a directory of its own.
    """
    from edgeprune.llm.hf import transformers

    hf = transformers()
    path = Path(path)
    lm = load_causal_lm(path)
    try:
        tokenizer = hf.AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot load the tokenizer of {path}: {exc}") from exc
    if text is None:
        train_text, heldout_text = pydoc_corpus()
        source = "pydoc_data.topics"
    else:
        train_text, heldout_text = split_text(read_text(text))
        source = str(text)
    train_ids = tokenize(tokenizer, train_text)
    heldout = token_windows(tokenize(tokenizer, heldout_text), seq_len, eval_samples)
    if len(train_ids) < seq_len + 1 or len(heldout) == 0:
        raise InputError(f"text {source} is too short for sequences of {seq_len} tokens")
    calibration = sample_windows(train_ids, seq_len, samples)
    finetune = token_windows(train_ids, seq_len, finetune_samples)
    return Workload(
        model=CausalLMLogits(lm),
        example_inputs=(calibration[:1],),
        calibration=[(window.unsqueeze(0),) for window in calibration],
        evaluate=lambda predict: perplexity(predict, heldout),
        finetune_data=[(finetune[i : i + 8],) for i in range(0, len(finetune), 8)],
        metric="perplexity",
        higher_is_better=False,
        name=name or path.name,
        task="causal-lm",
        extras={
            "hf_path": str(path),
            "tokenizer": tokenizer,
            "seq_len": seq_len,
            "text": source,
            "eval_tokens": heldout.numel(),
        },
    )
