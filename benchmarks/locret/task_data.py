"""Token-level task data for the densa trainer (`build_trainer(cfg, train_data=...)`).

The synthetic task vocabulary has no text tokenizer, so instead of SFT JSONL the samples are built on
the fly, deterministically from the step (exact resume, identical on every rank):

- `TaskCurriculum` + `CurriculumCallback`: backbone pretraining in stages.
  1. *Copy warm-up*: random tokens, then a random segment of them repeated; loss on the repeat. Its
     dense signal forms induction heads in a few hundred steps. On MQAR alone (4 answer tokens per row)
     the tiny model sat on the "some value of the context" plateau for 3000+ steps even at T = 12
     (docs/locret.md); after the warm-up, MQAR at T = 64 is solved in ~150 steps.
  2. *Length stages* (T = 64 → `max_len`): each batch mixes MQAR, passkey and first-occurrence rows of
     one length, loss on the answers only. A stage ends when the EMA of the training loss is below
     `threshold` (or after `max_stage_steps`); the last stage runs until the callback stops the run.
- `TaskHeads`: retaining-head training rows of one task, with `loss_mask` = the answer queries (what
  `heads_loss` reads) and `context_mask` = the context the heads score.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from densa.longctx.tasks import TaskSample, TaskVocab, first_occurrence, mqar, passkey
from densa.train.callbacks import Callback

Sample = dict[str, torch.Tensor]
VOCAB = TaskVocab()
N_DIGITS = 4


def task_sample(task: str, batch: int, seq_len: int, vocab: TaskVocab, seed: int) -> TaskSample:
    """The benchmark's setting of each task at `seq_len` (pairs grow with the length, up to 8)."""
    pairs = max(2, min(8, seq_len // 32))
    if task == "mqar":
        lo = max(2, pairs // 2)
        return mqar(batch, seq_len, (lo, pairs), min(4, lo), vocab=vocab, seed=seed)
    if task == "passkey":
        return passkey(batch, seq_len, N_DIGITS, vocab=vocab, seed=seed)
    if task == "first_occurrence":
        return first_occurrence(batch, seq_len, (2, max(2, pairs // 2)), 2, vocab=vocab, seed=seed)
    raise ValueError(f"unknown task {task!r}: mqar, passkey or first_occurrence")


def eval_sample(task: str, batch: int, seq_len: int, vocab: TaskVocab, seed: int) -> TaskSample:
    """The fixed in-distribution test setting: MQAR 8 pairs / 4 queries, passkey 4 digits,
    first-occurrence 4 keys × 2 occurrences / 2 queries."""
    if task == "mqar":
        return mqar(batch, seq_len, 8, 4, vocab=vocab, seed=seed)
    if task == "passkey":
        return passkey(batch, seq_len, N_DIGITS, vocab=vocab, seed=seed)
    return first_occurrence(batch, seq_len, 4, 2, vocab=vocab, seed=seed)


def copy_batch(batch: int, vocab: TaskVocab, seed: int, body: int = 24, segment: int = 16) -> Sample:
    """BOS, `body` random tokens, then `segment` of them (random start) again; every repeated token
    after the first is supervised. Solvable only by induction (the offset is random)."""
    gen = torch.Generator().manual_seed(seed)
    rand = torch.randint(vocab.key0, vocab.size, (batch, body), generator=gen)
    start = torch.randint(0, body - segment + 1, (batch,), generator=gen)
    seg = torch.stack([rand[b, s : s + segment] for b, s in enumerate(start.tolist())])
    ids = torch.cat([torch.full((batch, 1), vocab.bos), rand, seg], 1)
    labels = torch.full_like(ids, -100)
    labels[:, body + 1 : -1] = ids[:, body + 2 :]
    return {"input_ids": ids, "labels": labels, "loss_mask": (labels != -100).float()}


def mixed_batch(tasks: dict[str, int], seq_len: int, vocab: TaskVocab, seed: int) -> Sample:
    """`tasks[name]` rows of each task, all of `seq_len` tokens, loss on the answers only."""
    parts = [task_sample(t, n, seq_len, vocab, seed * 7 + i) for i, (t, n) in enumerate(tasks.items()) if n]
    ids = torch.cat([p.input_ids for p in parts])
    labels = torch.cat([p.labels for p in parts])
    return {"input_ids": ids, "labels": labels, "loss_mask": (labels != -100).float()}


class TaskCurriculum:
    """A trainer `BatchSource` (one micro-batch of `per_step` rows per step): copy warm-up, then length
    stages of mixed tasks; `CurriculumCallback` feeds it the training loss to advance stages."""

    def __init__(
        self,
        per_step: int,
        max_len: int,
        mix: dict[str, float] | None = None,
        lengths: tuple[int, ...] = (64, 128),
        threshold: float = 0.1,
        copy_threshold: float = 0.5,
        max_stage_steps: int = 400,
        vocab: TaskVocab = VOCAB,
        seed: int = 0,
    ) -> None:
        # first-occurrence learns slowest (it must also prefer the earlier match), passkey fastest.
        mix = mix or {"mqar": 0.4, "passkey": 0.1, "first_occurrence": 0.5}
        counts = {t: int(per_step * w) for t, w in mix.items()}
        counts[next(iter(counts))] += per_step - sum(counts.values())
        self.per_step, self.max_len, self.counts = per_step, max_len, counts
        self.vocab, self.seed = vocab, seed
        self.threshold, self.copy_threshold, self.max_stage_steps = threshold, copy_threshold, max_stage_steps
        self.lengths = [0] + sorted({n for n in lengths if n < max_len} | {max_len})  # 0 = copy warm-up
        self.stage, self.stage_start, self.ema = 0, 0, float("nan")
        self.log: list[tuple[int, int]] = [(0, 0)]  # (step, stage length) at each advance; 0 = copy

    @property
    def final(self) -> bool:
        return self.stage == len(self.lengths) - 1

    def update(self, step: int, loss: float) -> None:
        self.ema = loss if self.ema != self.ema else 0.9 * self.ema + 0.1 * loss
        threshold = self.copy_threshold if self.stage == 0 else self.threshold
        done = self.ema < threshold or step - self.stage_start >= self.max_stage_steps
        if not self.final and step - self.stage_start >= 20 and done:
            self.stage, self.stage_start, self.ema = self.stage + 1, step + 1, float("nan")
            self.log.append((step + 1, self.lengths[self.stage]))

    def __call__(self, consumed: int) -> Iterator[list[dict[str, Any]]]:
        step = consumed // self.per_step
        while True:
            seed = self.seed + step
            if self.stage == 0:
                yield [copy_batch(self.per_step, self.vocab, seed)]
            else:
                yield [mixed_batch(self.counts, self.lengths[self.stage], self.vocab, seed)]
            step += 1


class CurriculumCallback(Callback):
    """Feeds each step's training loss to a `TaskCurriculum`, logs its stage length (0 = copy warm-up)
    and stops the run once the last stage has run `final_steps` with the loss below threshold."""

    def __init__(self, source: TaskCurriculum, final_steps: int = 60) -> None:
        self.source, self.final_steps = source, final_steps
        self.stopped_early = False

    def post_step(self, trainer: Any, step: int, metrics: dict[str, Any]) -> None:
        src = self.source
        src.update(step, float(metrics["train/loss"]))
        if src.final and step - src.stage_start >= self.final_steps and src.ema < src.threshold:
            self.stopped_early = True  # solved at full length: end with a checkpoint
            trainer.request_stop()
        metrics["curriculum/context_len"] = src.lengths[src.stage]


class TaskHeads:
    """`num_samples` rows of `task` (the `eval_sample` setting) of `seq_len` tokens, for head training."""

    def __init__(
        self, task: str, num_samples: int, seq_len: int, vocab: TaskVocab = VOCAB, seed: int = 10**7
    ) -> None:
        self.task, self.num_samples, self.seq_len = task, num_samples, seq_len
        self.vocab, self.seed = vocab, seed

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, idx: int) -> Sample:
        s = eval_sample(self.task, 1, self.seq_len, self.vocab, self.seed + idx)
        return {
            "input_ids": s.input_ids[0],
            "labels": s.labels[0],
            "loss_mask": s.answer_mask[0].float(),
            "context_mask": s.context_mask[0],
        }
