import itertools

import pytest
import torch
import torch.nn.functional as F

from densa.sparse_moe import MoEError, balanced_assignment, balanced_kmeans, split_neurons
from densa.sparse_moe.balanced_kmeans import inertia


def clustered_rows(n: int = 256, dim: int = 32, k: int = 8, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, dim, generator=gen) * 2
    # Unequal natural cluster sizes, so the balanced constraint actually binds.
    which = torch.randint(0, k, (n,), generator=gen)
    return centres[which] + torch.randn(n, dim, generator=gen)


def test_assignment_is_exactly_balanced_and_optimal_on_small_problems():
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        scores = torch.randn(6, 3, generator=gen, dtype=torch.float64)
        labels = balanced_assignment(scores, capacity=2)
        assert torch.bincount(labels, minlength=3).tolist() == [2, 2, 2]
        got = float(scores.gather(1, labels[:, None]).sum())
        # Brute force over all ways to put 2 points in each cluster.
        best = max(
            float(scores[list(range(6)), list(p)].sum())
            for p in set(itertools.permutations([0, 0, 1, 1, 2, 2]))
        )
        assert got == pytest.approx(best, abs=1e-12)


@pytest.mark.timeout(120)
def test_duplicate_points_terminate_balanced_and_optimal():
    # Dead ReLU neurons are identical points; the rounding on their tied scores once faked a negative
    # cycle of -1.8e-15 and the augmenting-path walk went round it forever.
    gen = torch.Generator().manual_seed(0)
    points = torch.randn(64, 8, generator=gen)
    points[:40] = 0
    result = balanced_kmeans(points, 8, seed=0)
    assert torch.bincount(result.labels, minlength=8).tolist() == [8] * 8
    # Tied scores on a problem small enough to brute-force: still the optimum.
    scores = torch.randn(8, 4, generator=gen, dtype=torch.float64)
    scores[:5] = scores[0]
    labels = balanced_assignment(scores, capacity=2)
    assert torch.bincount(labels, minlength=4).tolist() == [2, 2, 2, 2]
    best = max(
        float(scores[list(range(8)), list(p)].sum())
        for p in set(itertools.permutations([0, 0, 1, 1, 2, 2, 3, 3]))
    )
    assert float(scores.gather(1, labels[:, None]).sum()) == pytest.approx(best, abs=1e-12)


def test_balanced_kmeans_sizes_exact_better_than_random_and_deterministic():
    rows = clustered_rows(n=512, k=16)
    a = split_neurons(rows, 16, seed=3)
    b = split_neurons(rows, 16, seed=3)
    assert torch.equal(a.labels, b.labels)
    assert torch.bincount(a.labels, minlength=16).tolist() == [32] * 16
    rand = split_neurons(rows, 16, method="random", seed=3)
    assert torch.bincount(rand.labels, minlength=16).tolist() == [32] * 16
    assert a.inertia < 0.6 * rand.inertia
    contiguous = split_neurons(rows, 16, method="contiguous")
    assert contiguous.labels.tolist() == [i // 32 for i in range(512)]
    # The reported inertia is the normalised-row inertia of the labels.
    assert a.inertia == pytest.approx(inertia(F.normalize(rows.double(), dim=1), a.labels, 16))


def test_warm_start_never_worse_than_fresh():
    rows = clustered_rows(n=256, k=8, seed=1)
    first = split_neurons(rows, 8, seed=0)
    drifted = rows + 0.05 * torch.randn_like(rows)
    fresh = split_neurons(drifted, 8, seed=1)
    warm = split_neurons(drifted, 8, seed=1, previous=first.labels)
    assert warm.inertia <= fresh.inertia + 1e-9
    assert (
        balanced_kmeans(F.normalize(drifted, dim=1), 8, init_labels=first.labels).labels.bincount().tolist()
        == [32] * 8
    )


def test_bad_expert_counts():
    rows = torch.randn(64, 8)
    with pytest.raises(MoEError, match=r"num_experts \(7\) must divide ffn_dim \(64\)"):
        split_neurons(rows, 7)
    with pytest.raises(MoEError, match="unknown MoEfication method 'spectral'"):
        split_neurons(rows, 8, method="spectral")
