"""Hypergeometric test, expert concentration, partitions and stability measures against hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from densa.analysis.errors import AnalysisError
from densa.analysis.modularity.emergence import spearman
from densa.analysis.modularity.experts import (
    check_experts,
    concentration,
    expert_ranking,
    hypergeom_sf,
    layer_partitions,
    top_neurons,
)
from densa.models import Transformer
from densa.sparse_moe import adjusted_rand_index, assignment_overlap
from densa.testing.models import tiny_model_config


def test_hypergeometric_tail_hand_computed() -> None:
    # N=10, K=3 successes, n=4 draws: P(X>=2) = [C(3,2)C(7,2) + C(3,3)C(7,1)] / C(10,4) = 70/210
    assert hypergeom_sf(2, 10, 3, 4) == pytest.approx(1 / 3, rel=1e-12)
    assert hypergeom_sf(0, 10, 3, 4) == pytest.approx(1.0)
    assert hypergeom_sf(4, 10, 3, 4) == 0.0
    # one term: all 15 draws inside a 96-neuron expert of 1536
    expected = math.comb(96, 15) / math.comb(1536, 15)
    assert hypergeom_sf(15, 1536, 96, 15) == pytest.approx(expected, rel=1e-9)


def test_concentrated_top_neurons_make_a_functional_expert() -> None:
    labels = torch.arange(64) // 16  # 4 experts of 16
    pred = torch.rand(2, 64, generator=torch.Generator().manual_seed(0)) * 0.1
    pred[0, 16:24] = 1.0  # label 0's 8 best neurons all in expert 1
    top = top_neurons(pred, 8 / 64)
    assert top.sum(1).tolist() == [8, 8]
    conc = concentration(top, labels, 4, alpha=0.001)
    assert conc.counts[0].tolist() == [0, 8, 0, 0]
    assert float(conc.p_values[0, 1]) == pytest.approx(math.comb(16, 8) / math.comb(64, 8), rel=1e-9)
    assert bool(conc.functional[0, 1]) and int(conc.functional[0].sum()) == 1
    assert conc.expected == pytest.approx(2.0)
    assert not bool(conc.functional[1].any())  # label 1's top neurons are spread at random
    assert conc.extent == pytest.approx(8 / 2.0)
    assert expert_ranking(conc, 0)[0] == 1


def test_expert_count_must_divide_the_ffn_width() -> None:
    assert check_experts(1536, 16) == 96
    with pytest.raises(AnalysisError, match="does not divide the FFN width 1536"):
        check_experts(1536, 10)


def test_partitions_are_balanced_and_random_ones_differ_by_seed() -> None:
    torch.manual_seed(0)
    model = Transformer(tiny_model_config())
    patterns = torch.randn(50, 64).relu()
    patterns[:, :5] = 0  # dead neurons: identical points must not stall the balanced assignment
    parts = layer_partitions(model.layers[0].ffn, patterns, 4, random_seeds=2)
    for labels in parts["param"] + parts["coact"] + parts["random"]:
        assert torch.bincount(labels, minlength=4).tolist() == [16] * 4
    assert not torch.equal(parts["random"][0], parts["random"][1])


def test_ari_overlap_and_spearman_hand_computed() -> None:
    a, b = torch.tensor([0, 0, 1, 1]), torch.tensor([0, 0, 1, 2])
    # Σ C(n_ij,2) = 1, Σ C(a_i,2) = 2, Σ C(b_j,2) = 1, C(4,2) = 6: (1 - 1/3) / (3/2 - 1/3) = 4/7
    assert adjusted_rand_index(a, b) == pytest.approx(4 / 7)
    assert adjusted_rand_index(a, torch.tensor([1, 1, 0, 0])) == pytest.approx(1.0)
    assert assignment_overlap(a, b) == pytest.approx(3 / 4)
    # ranks 0,1,2,3 vs 0,2,1,3: 1 - 6·Σd²/(n(n²-1)) = 1 - 6·2/60 = 0.8
    assert spearman(torch.tensor([1.0, 2, 3, 4]), torch.tensor([10.0, 30, 20, 40])) == pytest.approx(0.8)
