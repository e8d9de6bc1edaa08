"""Synthetic long-context tasks: seeded, answers consistent with the context, long-document variants."""

from __future__ import annotations

import pytest
import torch

from densa.errors import DensaError
from densa.longctx.tasks import (
    TaskVocab,
    answer_accuracy,
    first_occurrence,
    long_document_mqar,
    long_document_passkey,
    mqar,
    passkey,
    repeated_pair,
)

V = TaskVocab()


def _pairs(row: list[int], end: int) -> list[tuple[int, int]]:
    return [(row[i], row[i + 1]) for i in range(end - 1) if V.key0 <= row[i] < V.value0]


def test_mqar_is_seeded_and_answers_follow_keys() -> None:
    a, b = mqar(3, 64, (4, 6), 3, seed=5), mqar(3, 64, (4, 6), 3, seed=5)
    assert torch.equal(a.input_ids, b.input_ids) and not torch.equal(
        a.input_ids, mqar(3, 64, 6, 3, seed=6).input_ids
    )
    assert a.tail == 6 and a.input_ids.shape == (3, 64) and int(a.answer_mask.sum()) == 9
    for row, labels in zip(a.input_ids.tolist(), a.labels.tolist(), strict=True):
        ctx = 64 - a.tail
        pairs = dict(_pairs(row, ctx))
        assert 4 <= len(pairs) <= 6 and row[0] == V.bos
        for t in range(ctx, 64):
            if labels[t] != -100:
                assert row[t - 1] == V.query and labels[t] == pairs[row[t]]
        assert V.value0 <= min(labels[t] for t in range(64) if labels[t] != -100)
        assert all(tok not in range(V.value0, V.filler0) for tok in row[ctx:])  # answers hidden


def test_first_occurrence_answers_first_value() -> None:
    s = first_occurrence(4, 80, 4, 2, repeats=3, seed=2)
    for row, labels in zip(s.input_ids.tolist(), s.labels.tolist(), strict=True):
        pairs = _pairs(row, 80 - s.tail)
        assert len(pairs) == 12
        for t, label in enumerate(labels):
            if label != -100:
                assert label == next(v for k, v in pairs if k == row[t])


def test_passkey_depth_and_labels() -> None:
    s = passkey(2, 50, n_digits=3, depth=0.0, seed=1)
    row = s.input_ids[0].tolist()
    assert row[1] == V.passkey and row[-4:-2] == [V.query, V.passkey]
    assert s.labels[0, -3:].tolist() == row[2:5]
    logits = torch.nn.functional.one_hot(s.labels.clamp_min(0), V.size).float()
    assert answer_accuracy(logits, s) == 1.0
    assert answer_accuracy(logits[:, -s.tail :], s) == 1.0


def test_long_document_variants_embed_needles_in_text(tmp_path) -> None:
    (tmp_path / "a.txt").write_text("To be, or not to be, that is the question. " * 20)
    (tmp_path / "b.txt").write_text("Now is the winter of our discontent. " * 20)
    s = long_document_passkey(tmp_path, 2, 120, n_digits=2, seed=0)
    text = bytes(t - V.filler0 for t in s.input_ids[0].tolist() if t >= V.filler0).decode()
    assert "the" in text
    m = long_document_mqar(tmp_path / "a.txt", 2, 120, n_pairs=3, n_queries=2, seed=0)
    assert int(m.answer_mask.sum()) == 4
    with pytest.raises(DensaError, match="no text file or folder"):
        long_document_mqar(tmp_path / "missing", 1, 50)
    (tmp_path / "short").mkdir()
    (tmp_path / "short" / "c.txt").write_text("tiny")
    with pytest.raises(DensaError, match="text has 4 tokens"):
        long_document_passkey(tmp_path / "short", 1, 50)


def test_task_size_errors() -> None:
    with pytest.raises(DensaError, match="cannot hold 30 needles"):
        mqar(1, 40, 30, 2)
    with pytest.raises(DensaError, match="n_queries"):
        mqar(1, 40, 2, 3)


def test_repeated_pair_pins_a_sample_and_its_invariants() -> None:
    s = repeated_pair(2, 129, 3, blocks=4, seed=7)
    needles = [[(i, t) for i, t in enumerate(row) if t < V.filler0] for row in s.input_ids.tolist()]
    assert needles[0] == [
        (0, 0), (37, 51), (38, 95), (52, 44), (53, 100), (69, 44), (70, 104), (92, 55), (93, 104),
        (111, 55), (112, 100), (123, 51), (124, 95), (128, 1),
    ]  # fmt: skip
    assert s.tail == 1 and s.labels[:, -1].tolist() == [95, 114]
    assert s.answer_mask.nonzero().tolist() == [[0, 128], [1, 128]]
    for blocks in (2, 4):
        s = repeated_pair(16, 257, 4, blocks=blocks, seed=blocks)
        size = 256 // blocks
        for row, label in zip(s.input_ids.tolist(), s.labels[:, -1].tolist(), strict=True):
            pairs = _pairs(row, 256)
            keys, values = [k for k, _ in pairs], [v for _, v in pairs]
            assert len(pairs) == 8 and all(keys.count(k) == 2 and values.count(k) == 0 for k in keys)
            assert all(values.count(v) == 2 for v in values)  # counting tokens cannot find the target
            same = [k for k in set(keys) if len({v for kk, v in pairs if kk == k}) == 1]
            assert len(same) == 1 and dict(pairs)[same[0]] == label  # one key keeps its value: the answer
            for k in set(keys):
                first, second = (p for p in range(256) if row[p] == k)
                assert first // size < second // size and (first + 1) // size == first // size
            assert row[-1] == V.query


def test_repeated_pair_errors() -> None:
    with pytest.raises(
        DensaError, match=r"\(257 - 1 = 256 tokens\) must split into blocks ≥ 2 equal blocks, got blocks=3"
    ):
        repeated_pair(1, 257, blocks=3)
    with pytest.raises(DensaError, match="n_keys=2 must be ≥ 3 and its 4 bigrams fit blocks of 64 tokens"):
        repeated_pair(1, 257, 2)
    with pytest.raises(DensaError, match="n_keys=8 must be ≥ 3 and its 16 bigrams fit blocks of 32 tokens"):
        repeated_pair(1, 129, 8, blocks=4)


def test_repeated_pair_value_pool() -> None:
    s = repeated_pair(32, 257, 4, 2, value_pool=4, seed=1)
    values = s.input_ids[(s.input_ids >= V.value0) & (s.input_ids < V.filler0)]
    assert sorted(set(values.tolist())) == [V.value0 + i for i in range(4)]  # all 4, each twice a row
    assert values.numel() == 32 * 8
    with pytest.raises(DensaError, match=r"the value pool \(3\)"):
        repeated_pair(1, 257, 4, value_pool=3)
