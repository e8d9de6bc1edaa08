import pytest
import torch

from densa.sparsity.affinity import blocks_touched, chunking, coactivation_order, token_reuse


def sets_to_mask(sets, n):
    m = torch.zeros(len(sets), n, dtype=torch.bool)
    for t, s in enumerate(sets):
        m[t, list(s)] = True
    return m


def test_token_reuse_hand_computed():
    sets = [{0, 1}, {1, 2}, {0, 3}, {3}, set(), {0, 1, 2, 3}]
    active = sets_to_mask(sets, 4).unsqueeze(0)
    # w=1: t1 {1,2}∩{0,1}=1/2; t2 {0,3}∩{1,2}=0; t3 {3}∩{0,3}=1; t4 empty (skipped); t5 ∩ {} = 0
    # w=4: t1 1/2; t2 {0,3}∩{0,1,2}=1/2; t3 {3}∩{0,1,2,3}=1; t5 ∩ ({1,2}∪{0,3}∪{3}) = 4/4
    assert token_reuse(active, (1, 4)) == {1: pytest.approx((0.5 + 0 + 1 + 0) / 4), 4: pytest.approx(3 / 4)}


def test_blocks_touched_and_reordering_hand_computed():
    # neurons 0 and 2 always fire together, as do 1 and 3: the best 2-blocks are {0,2} and {1,3}
    active = sets_to_mask([{0, 2}, {1, 3}, {0, 2}, {1, 3}], 4)
    assert blocks_touched(active, 2) == 1.0  # original order: every token touches both blocks
    order = coactivation_order(active, 2)
    assert sorted(order.tolist()) == [0, 1, 2, 3]
    assert {frozenset(order[:2].tolist()), frozenset(order[2:].tolist())} == {
        frozenset({0, 2}),
        frozenset({1, 3}),
    }
    assert blocks_touched(active, 2, order) == 0.5


def test_chunking_rows_and_independent_baseline():
    gen = torch.Generator().manual_seed(0)
    active = torch.rand(200, 32, generator=gen) < 0.2
    rows = chunking(active, (4, 8))
    s = 1 - float(active.float().mean())
    assert [r["block_size"] for r in rows] == [4, 8]
    assert rows[0]["independent"] == pytest.approx(1 - s**4)
    assert rows[0]["original"] == pytest.approx(
        rows[0]["independent"], abs=0.05
    )  # independent by construction
