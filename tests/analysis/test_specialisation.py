"""Average precision, predictivity and specialisation against direct computations."""

from __future__ import annotations

import pytest
import torch

from densa.analysis.modularity.specialisation import average_precision, layer_specialisation, predictivity


def sklearn_definition(scores: list[float], labels: list[int]) -> float:
    """AP = Σ_n (R_n − R_{n−1}) P_n over the distinct thresholds, written out (sklearn's definition)."""
    positives, ap, prev_recall = sum(labels), 0.0, 0.0
    for t in sorted(set(scores), reverse=True):
        chosen = [y for s, y in zip(scores, labels, strict=True) if s >= t]
        recall = sum(chosen) / positives
        ap += (recall - prev_recall) * sum(chosen) / len(chosen)
        prev_recall = recall
    return ap


def test_hand_computed_case() -> None:
    # ranks: 0.9 (+), 0.8 (-), 0.7 (+), 0.1 (-): AP = (1/1 + 2/3) / 2
    ap = average_precision(torch.tensor([0.9, 0.8, 0.7, 0.1]), torch.tensor([1, 0, 1, 0]))
    assert float(ap) == pytest.approx((1 + 2 / 3) / 2, abs=1e-7)


def test_ties_share_the_precision_at_the_tie_end() -> None:
    # one threshold holds all four: every positive gets precision 2/4
    ap = average_precision(torch.zeros(4), torch.tensor([1, 0, 1, 0]))
    assert float(ap) == pytest.approx(0.5, abs=1e-7)


def test_matches_the_definition_on_random_columns_with_and_without_ties() -> None:
    gen = torch.Generator().manual_seed(0)
    for trial in range(30):
        n = int(torch.randint(5, 50, (1,), generator=gen))
        if trial % 2:
            scores = torch.randint(0, 4, (n, 3), generator=gen).float()  # ReLU-like ties
        else:
            scores = torch.randn(n, 3, generator=gen)
        labels = torch.rand(n, generator=gen) < 0.3
        labels[0] = True
        got = average_precision(scores, labels)
        for c in range(3):
            ref = sklearn_definition(scores[:, c].tolist(), labels.int().tolist())
            assert float(got[c]) == pytest.approx(ref, abs=1e-6)


def test_matches_sklearn_when_installed() -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    gen = torch.Generator().manual_seed(1)
    scores = torch.randint(0, 5, (200, 4), generator=gen).float()
    labels = torch.rand(200, generator=gen) < 0.2
    got = average_precision(scores, labels)
    for c in range(4):
        assert float(got[c]) == pytest.approx(metrics.average_precision_score(labels, scores[:, c]), abs=1e-6)


def test_predictivity_takes_the_better_direction() -> None:
    labels = torch.tensor([1, 1, 0, 0, 0, 0])
    quiet_on_positives = torch.tensor([[0.0], [0.1], [1.0], [2.0], [3.0], [4.0]])
    assert float(average_precision(quiet_on_positives, labels)[0]) < 0.5
    assert float(predictivity(quiet_on_positives, labels)[0]) == pytest.approx(1.0)


def test_a_planted_neuron_is_specialised_and_shuffles_are_not() -> None:
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (600,), generator=gen)
    acts = torch.randn(600, 200, generator=gen)
    acts[:, 7] += 4.0 * (labels == 1).float()  # neuron 7 fires for label 1
    spec = layer_specialisation(acts, labels, 3, quantile=0.99, baseline_shuffles=3)
    assert bool(spec.specialised[1, 7])
    assert float(spec.predictivity[1, 7]) > 0.95
    # the threshold is the 99th percentile of shuffled predictivity: about 1% of neurons per label pass
    assert all(f < 0.05 for f in spec.baseline_per_label)
    assert spec.fraction >= 1 / 200
