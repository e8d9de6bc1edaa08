"""The Locret benchmark's token-level task data for the trainer (benchmarks/locret/task_data.py)."""

from __future__ import annotations

import torch

from benchmarks.locret.task_data import (
    VOCAB,
    CurriculumCallback,
    TaskCurriculum,
    TaskHeads,
    copy_batch,
    mixed_batch,
)


def test_copy_batch_repeats_a_segment_of_the_body_and_supervises_the_repeat() -> None:
    batch = copy_batch(4, VOCAB, seed=3, body=24, segment=16)
    ids, labels = batch["input_ids"], batch["labels"]
    assert ids.shape == (4, 41) and (ids[:, 0] == VOCAB.bos).all()
    for row in range(4):
        body, seg = ids[row, 1:25].tolist(), ids[row, 25:].tolist()
        assert any(body[s : s + 16] == seg for s in range(9))  # a verbatim slice of the body
        supervised = (labels[row] != -100).nonzero().squeeze(-1).tolist()
        assert supervised == list(range(25, 40))  # every repeated token after the first, predicted
        assert labels[row, 25:40].tolist() == seg[1:]
    assert torch.equal(batch["loss_mask"].bool(), labels != -100)


def test_mixed_batch_has_each_task_at_one_length_with_answer_only_loss() -> None:
    batch = mixed_batch({"mqar": 3, "passkey": 2, "first_occurrence": 1}, 64, VOCAB, seed=0)
    ids, labels = batch["input_ids"], batch["labels"]
    assert ids.shape == (6, 64)
    per_row = (labels != -100).sum(1).tolist()
    assert per_row[3:5] == [4, 4]  # passkey: 4 digits
    assert per_row[5] == 2  # first-occurrence: 2 queries
    assert torch.equal(batch["loss_mask"].bool(), labels != -100)
    # Every label is a value token (the answers), never filler.
    answers = labels[labels != -100]
    assert ((answers >= VOCAB.value0) & (answers < VOCAB.filler0)).all()


def _next_len(source: TaskCurriculum, consumed: int) -> int:
    return next(iter(source(consumed)))[0]["input_ids"].shape[1]


def test_curriculum_advances_on_low_loss_or_after_max_steps_and_stops_when_solved() -> None:
    source = TaskCurriculum(per_step=4, max_len=256, lengths=(64, 128), max_stage_steps=50)
    assert source.lengths == [0, 64, 128, 256]
    assert _next_len(source, 0) == 41  # copy warm-up rows
    for step in range(20):
        source.update(step, 5.0)
    assert source.stage == 0  # high loss, before max_stage_steps
    source.update(20, 0.1)  # the loss is smoothed: one low value is not enough
    assert source.stage == 0
    for step in range(21, 60):
        source.update(step, 0.0)
    assert source.stage >= 1 and _next_len(source, 0) == 64
    stage_start = source.stage_start
    for step in range(stage_start, stage_start + 51):
        source.update(step, 3.0)  # never solved: max_stage_steps moves on anyway
    assert source.lengths[source.stage] == 128
    assert [length for _, length in source.log] == [0, 64, 128]

    class Stub:
        stopped = False

        def request_stop(self) -> None:
            self.stopped = True

    trainer, callback = Stub(), CurriculumCallback(source, final_steps=5)
    step = source.stage_start
    while not trainer.stopped and step < source.stage_start + 200:
        callback.post_step(trainer, step, metrics := {"train/loss": 0.0})
        step += 1
    assert source.final and trainer.stopped and callback.stopped_early
    assert metrics["curriculum/context_len"] == 256


def test_curriculum_batches_are_deterministic_by_step() -> None:
    a, b = TaskCurriculum(4, 128), TaskCurriculum(4, 128)
    assert torch.equal(next(iter(a(40)))[0]["input_ids"], next(iter(b(40)))[0]["input_ids"])
    assert not torch.equal(next(iter(a(40)))[0]["input_ids"], next(iter(a(44)))[0]["input_ids"])


def test_heads_samples_carry_context_mask() -> None:
    row = TaskHeads("mqar", 3, 64)[1]
    assert row["input_ids"].shape == (64,) and int(row["loss_mask"].sum()) == 4
    assert row["context_mask"][:56].all() and not row["context_mask"][56:].any()
    assert int(TaskHeads("passkey", 2, 64)[0]["loss_mask"].sum()) == 4
