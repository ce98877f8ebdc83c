"""Training a small causal LM from scratch: the recipe the shipped example models share.

A byte-level BPE tokenizer trained on the training text, then AdamW (no weight decay) on
random windows of it, a linear warm-up over the first twentieth of the steps and a cosine
decay to a tenth of the peak rate. Deterministic for a seed on one machine.
"""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from edgeprune.llm.workload import sample_windows

EOS = "<|endoftext|>"


def tiny_llama(vocab: int, hidden: int, ffn: int, heads: int, kv_heads: int, layers: int = 4):
    """Returns an untrained LlamaForCausalLM of the example LMs' kind: tied embeddings, 512
    positions, token 0 as both BOS and EOS (the byte-level tokenizer's first token)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=512,
        tie_word_embeddings=True, bos_token_id=0, eos_token_id=0))


def byte_level_bpe(text: str, vocab_size: int):
    """Returns a byte-level BPE tokenizer (transformers fast tokenizer) trained on ``text``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[EOS],
        show_progress=False,
    )
    bpe.train_from_iterator([text], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=EOS, bos_token=EOS)


def train_causal_lm(
    model: torch.nn.Module,
    ids: torch.Tensor,
    *,
    seq_len: int,
    steps: int = 600,
    batch: int = 16,
    lr: float = 5e-3,
    seed: int = 0,
    log: bool = False,
) -> torch.nn.Module:
    """Returns ``model`` (in eval mode) after ``steps`` steps of next-token training on ``ids``.

    Each step draws ``batch`` windows of ``seq_len + 1`` tokens at offsets fixed by the seed
    and the step, so a run is reproducible. No weight decay: a tiny LM trained with decay 0.1
    came out with weight magnitude an unusually good guide to which weights matter, unlike
    LLMs trained at length (see examples/tiny_lm.py).
    """
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    warmup = max(1, steps // 20)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.1 + 0.45 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    model.train()
    start = time.perf_counter()
    for step in range(steps):
        windows = sample_windows(ids, seq_len + 1, batch, seed=seed * 100003 + step)
        logits = model(input_ids=windows[:, :-1], use_cache=False).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if log and (step % 50 == 0 or step == steps - 1):
            print(f"step {step:4d} loss {loss.item():.3f} ({time.perf_counter() - start:.0f} s)", flush=True)
    return model.eval()


def save_fp16(model: torch.nn.Module, tokenizer, path: str | Path) -> Path:
    """Returns ``path`` after saving the model (fp16 safetensors) and tokenizer there, whole or not at all."""
    path = Path(path)
    # written beside the target and moved in whole, so a half-written directory never loads
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.half().save_pretrained(str(tmp), safe_serialization=True)
    model.float()
    tokenizer.save_pretrained(str(tmp))
    shutil.rmtree(path, ignore_errors=True)
    tmp.replace(path)
    return path
