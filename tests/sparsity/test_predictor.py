import pytest
import torch

from densa.sparsity.predictor import average_precision, predictivity, reweighted_bce, train_predictor


def test_planted_low_rank_pattern_is_recovered():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3000, 16, generator=gen)
    u, v = torch.randn(16, 4, generator=gen), torch.randn(4, 48, generator=gen)
    labels = x @ u @ v > 1.0  # rank-4 structure, ~30% active
    pred, m = train_predictor(x, labels, rank=4, epochs=30, lr=1e-2, batch_size=256)
    assert m.recall > 0.95
    assert m.average_precision > 0.9
    assert m.predicted_sparsity > 0.4  # it does not reach recall by predicting everything active
    assert pred.cost_ratio == pytest.approx(4 * (16 + 48) / (16 * 48))


def test_reweighted_bce_weights():
    labels = torch.tensor([[True, False, False, False]])
    logits = torch.zeros(1, 4)
    w = 0.25 + 0.005
    expected = torch.log(torch.tensor(2.0)) * ((1 - w) + 3 * w) / 4
    assert float(reweighted_bce(logits, labels)) == pytest.approx(float(expected))


def test_average_precision_hand_computed():
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    labels = torch.tensor([True, False, True, False])
    assert average_precision(scores, labels) == pytest.approx((1 / 1 + 2 / 3) / 2)


def test_predictivity_on_a_model_reports_every_layer(relu_model, eval_seqs):
    metrics = predictivity(relu_model, eval_seqs, rank=8, max_tokens=512, epochs=3, lr=1e-2, val_fraction=0.2)
    assert [m.layer for m in metrics] == [0, 1]
    for m in metrics:
        assert 0.0 <= m.recall <= 1.0 and 0.0 < m.true_sparsity < 1.0
