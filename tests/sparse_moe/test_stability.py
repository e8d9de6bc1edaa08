import pytest
import torch

from densa.sparse_moe import adjusted_rand_index, assignment_overlap

T = torch.tensor


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ([0, 0, 1, 1], [0, 0, 1, 1], 1.0),
        ([0, 0, 1, 1], [1, 1, 0, 0], 1.0),  # renaming clusters changes nothing
        # n_ij all 1: index 0; Σa = Σb = 2, C(4,2) = 6 -> E = 2/3; max 2; ARI = (0 - 2/3) / (2 - 2/3)
        ([0, 0, 1, 1], [0, 1, 0, 1], -0.5),
        # index 1, Σa 2, Σb 1, E = 1/3, max 1.5 -> (1 - 1/3) / (1.5 - 1/3) = 4/7
        ([0, 0, 1, 1], [0, 0, 1, 2], 4 / 7),
        # index 2, Σa 6, Σb 3, C(6,2) = 15 -> E = 1.2, max 4.5 -> 0.8 / 3.3 = 8/33
        ([0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 2, 2], 8 / 33),
        ([0, 0, 0, 0], [0, 0, 0, 0], 1.0),  # degenerate: one cluster each
    ],
)
def test_ari_hand_computed(a, b, expected):
    assert adjusted_rand_index(T(a), T(b)) == pytest.approx(expected, abs=1e-12)


def test_ari_symmetric_and_near_zero_for_independent_balanced_splits():
    gen = torch.Generator().manual_seed(0)
    a = torch.randperm(4096, generator=gen) % 16
    b = torch.randperm(4096, generator=gen) % 16
    assert adjusted_rand_index(a, b) == pytest.approx(adjusted_rand_index(b, a))
    assert abs(adjusted_rand_index(a, b)) < 0.01


def test_overlap_hand_computed():
    # clusters of a: {0,1,2} -> b labels 0,0,1 (best 2); {3,4,5} -> 1,2,2 (best 2): 4 of 6.
    assert assignment_overlap(T([0, 0, 0, 1, 1, 1]), T([0, 0, 1, 1, 2, 2])) == pytest.approx(4 / 6)
    assert assignment_overlap(T([0, 0, 1, 1]), T([1, 1, 0, 0])) == 1.0
    with pytest.raises(ValueError, match="equally long"):
        adjusted_rand_index(T([0, 1]), T([0, 1, 1]))
