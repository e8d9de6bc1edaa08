"""The Locret benchmark's token-level MQAR datasets for the trainer (benchmarks/locret/task_data.py)."""

from __future__ import annotations

import torch

from benchmarks.locret.task_data import MQARCurriculum, MQARHeads, curriculum
from densa.data.sampler import collate


def test_curriculum_grows_to_max_len() -> None:
    lengths = [curriculum(s, 100, 256)[0] for s in range(100)]
    assert lengths[0] <= 16 and lengths[-1] == 256
    assert lengths == sorted(lengths)
    assert curriculum(99, 100, 256)[1:] == ((6, 12), 4)


def test_one_step_collates_and_masks_only_answers() -> None:
    ds = MQARCurriculum(steps=10, samples_per_step=4, max_len=64)
    assert len(ds) == 40
    batch = collate([ds[i] for i in range(20, 24)])  # one step: equal lengths
    mask = batch["loss_mask"].bool()
    assert mask.any() and torch.equal(mask, batch["labels"] != -100)
    assert MQARCurriculum(10, 4, 64)[5]["input_ids"].equal(ds[5]["input_ids"])  # deterministic


def test_heads_samples_carry_context_mask() -> None:
    row = MQARHeads(3, 64, n_pairs=4, n_queries=2)[1]
    assert row["input_ids"].shape == (64,) and int(row["loss_mask"].sum()) == 2
    assert row["context_mask"][:60].all() and not row["context_mask"][60:].any()
