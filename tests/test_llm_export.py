"""A pruned causal LM exported to ONNX computes the same logits in ONNX Runtime."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from edgeprune.backends.onnx_tools.export import export_onnx  # noqa: E402
from edgeprune.backends.onnx_tools.runtime import predictor  # noqa: E402
from edgeprune.llm import CausalLMLogits, perplexity, prune_causal_lm  # noqa: E402


def test_structured_llama_exports_with_a_dynamic_batch_and_matching_logits(tmp_path):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=64,
    )
    model = CausalLMLogits(transformers.LlamaForCausalLM(config).eval())
    ids = torch.randint(0, 96, (4, 32), generator=torch.Generator().manual_seed(0))
    pruned = prune_causal_lm(model, "structured", 0.3, [(row.unsqueeze(0),) for row in ids]).model

    # the exporter every build uses, from a batch-1 example: the batch axis must stay free
    path = export_onnx(pruned, (ids[:1],), tmp_path / "model.onnx")
    predict = predictor(path)
    with torch.no_grad():
        for batch in (ids[:1], ids[:3]):
            expected = pruned(batch)
            actual = predict(batch)
            assert actual.shape == expected.shape == (len(batch), 32, 96)
            assert float((actual - expected).abs().max()) < 1e-4
        # the way a Workload scores an artifact: batches of 8 token windows through predict
        windows = torch.randint(0, 96, (11, 32), generator=torch.Generator().manual_seed(1))
        assert perplexity(predict, windows) == pytest.approx(perplexity(pruned, windows), rel=1e-5)
