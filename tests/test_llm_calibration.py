"""Block-by-block calibration: each block sees the pruned block before it; memory does not grow with depth."""

from __future__ import annotations

import weakref

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

transformers = pytest.importorskip("transformers")

from edgeprune.llm import prune_causal_lm  # noqa: E402
from edgeprune.llm.calibrate import capture_block_inputs, collect_input_stats  # noqa: E402

HIDDEN = 64
SEQ = 128
SEQUENCES = 16


class LiveTensorBytes(TorchDispatchMode):
    """Measures the peak bytes of tensor storage that torch operations allocate inside the block.

    Every op's new output storages are counted until they are freed; storages an op merely
    writes into or views (parameters updated in place) are not new and are not counted.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._seen: set[int] = set()

    def _free(self, key: int, size: int) -> None:
        self._seen.discard(key)
        self.live -= size

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        for tensor in tree_flatten(out)[0]:
            if not isinstance(tensor, torch.Tensor):
                continue
            storage = tensor.untyped_storage()
            key = storage.data_ptr()
            if key in inputs or key in self._seen or storage.nbytes() == 0:
                continue
            self._seen.add(key)
            self.live += storage.nbytes()
            self.peak = max(self.peak, self.live)
            weakref.finalize(storage, self._free, key, storage.nbytes())
        return out


def tiny_llama(layers: int):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=128, hidden_size=HIDDEN, intermediate_size=128, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=SEQ,
    )
    return transformers.LlamaForCausalLM(config).eval()


def calibration():
    generator = torch.Generator().manual_seed(0)
    return [(torch.randint(0, 128, (1, SEQ), generator=generator),) for _ in range(SEQUENCES)]


def peak_bytes(layers: int) -> int:
    model = tiny_llama(layers)
    with LiveTensorBytes() as meter:
        prune_causal_lm(model, "unstructured", 0.5, calibration(), criterion="wanda", batch_size=2, inplace=True)
    return meter.peak


def test_the_meter_sees_activations_that_are_kept():
    # the meter is what the bound below relies on: holding every block's hidden states shows up
    model = tiny_llama(8)
    ids = torch.cat([batch[0] for batch in calibration()])
    with LiveTensorBytes() as meter, torch.no_grad():
        model(input_ids=ids, output_hidden_states=True, use_cache=False)
    assert meter.peak > 9 * SEQUENCES * SEQ * HIDDEN * 4


def test_calibration_peak_memory_does_not_grow_with_depth():
    hidden_states = SEQUENCES * SEQ * HIDDEN * 4  # one copy of the calibration hidden states
    shallow, deep = peak_bytes(2), peak_bytes(6)
    assert shallow >= hidden_states  # the stored block inputs are measured
    assert deep <= 1.15 * shallow
    # well under what keeping the inputs of all six blocks would take
    assert deep < 4 * hidden_states


def test_each_block_calibrates_on_the_pruned_outputs_of_the_block_before():
    model = tiny_llama(3)
    seen: dict[int, torch.Tensor] = {}

    def first_input(index):
        def hook(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            seen.setdefault(index, hidden.detach().clone())

        return hook

    for i, block in enumerate(model.model.layers):
        block.register_forward_pre_hook(first_input(i), with_kwargs=True)
    batches = calibration()
    pruned = prune_causal_lm(model, "unstructured", 0.5, batches, criterion="wanda", batch_size=4, inplace=True).model
    ids = torch.cat([batch[0] for batch in batches[:4]])
    seen_during_pruning = dict(seen)
    with torch.no_grad():
        states = pruned(input_ids=ids, output_hidden_states=True, use_cache=False).hidden_states
    for i in (1, 2):
        # hidden_states[i] is the output of pruned block i - 1 on the first calibration batch
        torch.testing.assert_close(seen_during_pruning[i], states[i], rtol=1e-5, atol=1e-5)


def test_statistics_pass_stops_after_the_last_needed_input():
    model = tiny_llama(1)
    block = model.model.layers[0]
    calls = []
    block.mlp.down_proj.register_forward_hook(lambda *_: calls.append("down"))
    block.self_attn.o_proj.register_forward_hook(lambda *_: calls.append("o"))
    inputs = capture_block_inputs(model, block, [batch[0] for batch in calibration()[:2]])
    stats = collect_input_stats(block, inputs, [("self_attn.o_proj",)], gram=("self_attn.o_proj",))
    assert calls == []  # the o_proj input was all it needed
    assert stats["self_attn.o_proj"].tokens == 2 * SEQ
    assert stats["self_attn.o_proj"].gram.shape == (HIDDEN, HIDDEN)
