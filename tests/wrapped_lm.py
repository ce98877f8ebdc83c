"""Hugging Face causal LMs (random init, from their configs) in a user's own plain wrapper, no task set."""

import torch
from torch import nn

import edgeprune


class Logits(nn.Module):
    """What users write around a transformers model: ids in, logits out."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=ids, use_cache=False).logits


def _workload(model: nn.Module, name: str) -> edgeprune.Workload:
    ids = torch.randint(0, 96, (8, 16), generator=torch.Generator().manual_seed(0))
    return edgeprune.Workload(model=Logits(model.eval()), example_inputs=(ids[:1],),
                              calibration=[(ids[i:i + 4],) for i in range(0, 8, 4)], name=name, task="other")


def llama() -> edgeprune.Workload:
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return _workload(transformers.LlamaForCausalLM(config), "wrapped_llama")


def gpt2() -> edgeprune.Workload:
    import transformers

    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=96, n_embd=64, n_layer=2, n_head=4, n_positions=64,
                                     bos_token_id=0, eos_token_id=0)
    return _workload(transformers.GPT2LMHeadModel(config), "wrapped_gpt2")
