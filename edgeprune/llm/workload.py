"""Causal-LM workloads: a Hugging Face model directory, calibration text and held-out perplexity."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from edgeprune.errors import InputError
from edgeprune.llm.logits import CausalLMLogits
from edgeprune.llm.save import load_causal_lm
from edgeprune.llm.text import pydoc_corpus, read_text, split_text
from edgeprune.tasks import CAUSAL_LM
from edgeprune.workload import LMText, Workload

OVERALL = "overall"  # the pooled figure's key when evaluate scores slices


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
def negative_log_likelihood(
    predict: Callable[..., torch.Tensor], windows: torch.Tensor, batch_size: int = 8
) -> tuple[float, int]:
    """Returns (summed next-token negative log-likelihood, tokens predicted) over the windows.

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
    return total_nll, total_tokens


def perplexity(predict: Callable[..., torch.Tensor], windows: torch.Tensor, batch_size: int = 8) -> float:
    """Returns exp(mean next-token negative log-likelihood) of ``predict`` over the windows."""
    nll, tokens = negative_log_likelihood(predict, windows, batch_size)
    return math.exp(nll / tokens)


def slice_perplexities(
    predict: Callable[..., torch.Tensor], slices: Mapping[str, torch.Tensor], batch_size: int = 8
) -> dict[str, float]:
    """Returns ``{"overall": pooled perplexity, slice: perplexity, ...}`` over each slice's windows.

    The pooled figure is exp of the mean negative log-likelihood over every predicted token
    of every slice, so a slice weighs in by its token count.
    """
    scored = {name: negative_log_likelihood(predict, windows, batch_size) for name, windows in slices.items()}
    pooled_nll = sum(nll for nll, _ in scored.values())
    pooled_tokens = sum(tokens for _, tokens in scored.values())
    return {
        OVERALL: math.exp(pooled_nll / pooled_tokens),
        **{name: math.exp(nll / tokens) for name, (nll, tokens) in scored.items()},
    }


def eval_slices(
    tokenizer, eval_texts: Mapping[str, Sequence[str]], seq_len: int, limit: int | None
) -> dict[str, torch.Tensor]:
    """Returns each slice's held-out windows: its texts tokenised one by one, then cut into windows.

    InputError for a slice named ``overall``, a slice with no text, or one too short for a window.
    """
    if not isinstance(eval_texts, Mapping) or not eval_texts:
        raise InputError("eval_texts must be a non-empty mapping of slice name -> list of texts")
    slices: dict[str, torch.Tensor] = {}
    for name, texts in eval_texts.items():
        if not isinstance(name, str) or not name or name == OVERALL:
            raise InputError(f"eval_texts slice name {name!r} is not allowed: give a non-empty name other than {OVERALL!r}")
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise InputError(f"eval_texts[{name!r}] must be a list of strings")
        ids = [tokenize(tokenizer, text) for text in texts if text.strip()]
        windows = token_windows(torch.cat(ids) if ids else torch.empty(0, dtype=torch.long), seq_len, limit)
        if len(windows) == 0:
            raise InputError(f"eval_texts[{name!r}] is too short for one sequence of {seq_len} tokens")
        slices[name] = windows
    return slices


def causal_lm_workload(
    path: str | Path,
    text: str | Path | None = None,
    seq_len: int = 128,
    samples: int = 32,
    *,
    eval_samples: int | None = 128,
    finetune_samples: int = 256,
    name: str | None = None,
    eval_texts: Mapping[str, Sequence[str]] | None = None,
) -> Workload:
    """Returns a Workload for the Hugging Face causal LM saved in the directory ``path``.

    text: a UTF-8 text file whose last tenth is held out for perplexity and whose rest gives
        calibration and fine-tuning windows; by default the interpreter's own help topics
        (``pydoc_data.topics``), split by topic.
    seq_len: tokens per sequence, pinned: calibration, evaluation and the exported model's
        input all use it.
    samples: calibration sequences, drawn at random offsets of the training text.
    eval_samples: held-out windows scored by ``evaluate`` (None: all of them); with
        ``eval_texts``, the most scored per slice.
    eval_texts: slice name -> held-out texts (say, one slice a language). Then the whole of
        ``text`` gives calibration and fine-tuning windows, and ``evaluate`` returns
        ``{"overall": pooled perplexity, slice: perplexity, ...}`` instead of one float.

    The Workload's model maps ``input_ids`` (batch, seq_len) to logits; its metric is
    perplexity (lower is better); ``text`` holds the source directory, the tokenizer and
    the sequence length so the pruned model can be saved as a directory of its own.
    """
    from edgeprune.llm.hf import from_folder, transformers

    hf = transformers()
    path = Path(path)
    lm = load_causal_lm(path)
    tokenizer = from_folder(hf.AutoTokenizer, path, "the tokenizer")
    if text is None:
        train_text, heldout_text = pydoc_corpus()
        source = "pydoc_data.topics"
    elif eval_texts is not None:
        train_text, heldout_text = read_text(text), ""
        source = str(text)
    else:
        train_text, heldout_text = split_text(read_text(text))
        source = str(text)
    train_ids = tokenize(tokenizer, train_text)
    if eval_texts is None:
        heldout = token_windows(tokenize(tokenizer, heldout_text), seq_len, eval_samples)
        slices = {}
        evaluate = lambda predict: perplexity(predict, heldout)  # noqa: E731
    else:
        slices = eval_slices(tokenizer, eval_texts, seq_len, eval_samples)
        heldout = torch.cat(list(slices.values()))
        evaluate = lambda predict: slice_perplexities(predict, slices)  # noqa: E731
    if len(train_ids) < seq_len + 1 or len(heldout) == 0:
        raise InputError(f"text {source} is too short for sequences of {seq_len} tokens")
    calibration = sample_windows(train_ids, seq_len, samples)
    finetune = token_windows(train_ids, seq_len, finetune_samples)
    return Workload(
        model=CausalLMLogits(lm),
        example_inputs=(calibration[:1],),
        calibration=[(window.unsqueeze(0),) for window in calibration],
        evaluate=evaluate,
        finetune_data=[(finetune[i : i + 8],) for i in range(0, len(finetune), 8)],
        metric="perplexity",
        higher_is_better=False,
        name=name or path.name,
        task=CAUSAL_LM,
        inputs=f"text {source}: {len(calibration)} calibration windows, {heldout.numel()} held-out tokens",
        text=LMText(tokenizer, seq_len, source, heldout.numel(),
                    {name: windows.numel() for name, windows in slices.items()}, str(path)),
    )
