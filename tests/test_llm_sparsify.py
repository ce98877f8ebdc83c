"""The pruning math on its own: Wanda scores, masks, SparseGPT updates, least-squares restoration."""

from __future__ import annotations

import pytest
import torch

from edgeprune.llm.sparsegpt import sparsegpt_
from edgeprune.llm.sparsify import sparsify_, unstructured_mask
from edgeprune.llm.width import column_scores, least_squares_restore
from edgeprune.prune.masks import keep_n_of_m, wanda_scores


def correlated_inputs(tokens: int = 512, features: int = 64, seed: int = 0) -> torch.Tensor:
    """Returns activations with a few loud features and correlations, as in real LLM layers."""
    g = torch.Generator().manual_seed(seed)
    mixing = torch.randn(features, features, generator=g) / features**0.5 + torch.eye(features)
    x = torch.randn(tokens, features, generator=g) @ mixing
    x[:, :4] *= 20.0  # outlier features, the case Wanda was designed for
    return x


def test_wanda_scores_weigh_each_weight_by_its_input_norm():
    w = torch.tensor([[1.0, -2.0], [-3.0, 0.5]])
    norms = torch.tensor([10.0, 1.0])
    assert torch.equal(wanda_scores(w, norms.unsqueeze(0)), torch.tensor([[10.0, 2.0], [30.0, 0.5]]))


def test_per_row_mask_drops_the_lowest_scores_of_every_row():
    scores = torch.tensor([[4.0, 1.0, 3.0, 2.0], [0.1, 0.4, 0.3, 0.2]])
    keep = unstructured_mask(scores, 0.5, per_row=True)
    assert keep.tolist() == [[True, False, True, False], [False, True, True, False]]


def test_whole_matrix_mask_may_empty_a_row():
    scores = torch.tensor([[4.0, 3.0], [0.1, 0.2]])
    assert unstructured_mask(scores, 0.5, per_row=False).tolist() == [[True, True], [False, False]]


def test_nm_mask_keeps_the_two_largest_of_every_four():
    scores = torch.tensor([[1.0, 4.0, 3.0, 2.0, 0.5, 0.1, 0.9, 0.7]])
    assert keep_n_of_m(scores, 2, 4).int().tolist() == [[0, 1, 1, 0, 0, 0, 1, 1]]
    random = keep_n_of_m(torch.rand(32, 64), 2, 4)
    assert torch.equal(random.view(32, 16, 4).sum(-1), torch.full((32, 16), 2))


def test_wanda_keeps_the_output_of_a_layer_with_outlier_features_better_than_magnitude():
    x = correlated_inputs()
    w = torch.randn(48, 64, generator=torch.Generator().manual_seed(1))
    errors = {}
    for name, scores, per_row in [
        ("magnitude", w.abs(), False),
        ("wanda", wanda_scores(w, x.norm(dim=0).unsqueeze(0)), True),
    ]:
        pruned = w.clone()
        sparsify_(pruned, scores, 0.5, None, per_row)
        assert (pruned == 0).float().mean() == 0.5
        errors[name] = float((x @ (w - pruned).t()).pow(2).mean())
    assert errors["wanda"] < 0.5 * errors["magnitude"]


@pytest.mark.parametrize("nm", [None, (2, 4)])
def test_sparsegpt_updates_beat_wanda_masks_at_the_same_sparsity(nm):
    x = correlated_inputs()
    gram = x.t() @ x
    w = torch.randn(48, 64, generator=torch.Generator().manual_seed(1))
    wanda = w.clone()
    sparsify_(wanda, wanda_scores(w, x.norm(dim=0).unsqueeze(0)), 0.5, nm, per_row=True)
    sgpt = w.clone()
    sparsegpt_(sgpt, gram, 0.5, nm, block_size=32)
    assert (sgpt == 0).float().mean() == 0.5
    if nm:
        assert torch.equal((sgpt != 0).view(48, 16, 4).sum(-1), torch.full((48, 16), 2))
    error = lambda pruned: float((x @ (w - pruned).t()).pow(2).mean())  # noqa: E731
    assert error(sgpt) < 0.7 * error(wanda)


def test_least_squares_restoration_is_the_least_squares_solution():
    # activations of a real layer live near a low-dimensional subspace: 12 directions in 32
    g = torch.Generator().manual_seed(2)
    x = torch.randn(512, 12, generator=g) @ torch.randn(12, 32, generator=g) + 0.1 * torch.randn(512, 32, generator=g)
    w = torch.randn(16, 32, generator=g)
    keep = torch.arange(0, 32, 2)
    restored = least_squares_restore(w, x.t() @ x, keep, damp=0.0)
    expected = torch.linalg.lstsq(x[:, keep].double(), (x @ w.t()).double()).solution.t().float()
    torch.testing.assert_close(restored, expected, rtol=1e-3, atol=1e-3)
    dropped = float((x @ w.t() - x[:, keep] @ w[:, keep].t()).pow(2).mean())
    refit = float((x @ w.t() - x[:, keep] @ restored.t()).pow(2).mean())
    assert refit < 0.5 * dropped


def test_column_scores_sum_wanda_scores_over_rows():
    w = torch.tensor([[1.0, -2.0], [3.0, 1.0]])
    assert column_scores(w, torch.tensor([2.0, 0.5])).tolist() == [8.0, 1.5]
    assert column_scores(w, None).tolist() == [4.0, 3.0]
