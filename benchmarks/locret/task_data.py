"""Token-level MQAR datasets for the densa trainer (`build_trainer(cfg, train_data=...)`).

The synthetic task vocabulary has no text tokenizer, so instead of SFT JSONL the samples are built on
the fly, deterministically from the sample index (exact resume, identical on every rank):

- `MQARCurriculum`: backbone pretraining. Sample i belongs to step i // samples_per_step, and the step
  sets the length: T grows geometrically from 8 (2–3 pairs) to `max_len` (6–12 pairs) over the first
  80% of the steps (reference/longctx.md §7.1: without it, MQAR stays near chance on a tiny model).
  `loss_mask` marks the value predictions of the query segment only.
- `AdaptiveMQAR` + `CurriculumCallback`: the same stages, but a stage ends when the smoothed training
  loss falls below `threshold` (or after `max_stage_steps`); the last stage runs to the end.
- `MQARHeads`: retaining-head training. Fixed-length samples with `loss_mask` = the answer queries
  (what `heads_loss` reads) and `context_mask` = the context the heads score.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from densa.longctx.tasks import TaskSample, TaskVocab, mqar, passkey
from densa.train.callbacks import Callback

Sample = dict[str, torch.Tensor]
VOCAB = TaskVocab()


def curriculum(step: int, steps: int, max_len: int) -> tuple[int, tuple[int, int], int]:
    """(sequence length, pair range, queries) at `step`: T = 8 → max_len over 80% of the steps."""
    frac = min(1.0, step / max(1, int(0.8 * steps)))
    seq = int(8 * (max_len / 8) ** frac)
    hi = max(3, min(12, seq // 16))
    pairs = (max(2, hi // 2), hi)
    n_queries = min(4, pairs[0])
    return min(max_len, seq + 2 * n_queries), pairs, n_queries


def stage_params(seq: int, max_len: int) -> tuple[int, tuple[int, int], int]:
    """(length, pair range, queries) of the stage whose context is about `seq` tokens."""
    hi = max(3, min(12, seq // 16))
    pairs = (max(2, hi // 2), hi)
    n_queries = min(4, pairs[0])
    return min(max_len, seq + 2 * n_queries), pairs, n_queries


def _row(sample: TaskSample, with_context: bool) -> Sample:
    out = {
        "input_ids": sample.input_ids[0],
        "labels": sample.labels[0],
        "loss_mask": sample.answer_mask[0].float(),
    }
    if with_context:
        out["context_mask"] = sample.context_mask[0]
    return out


class MQARCurriculum:
    """`steps × samples_per_step` MQAR samples whose length follows `curriculum`."""

    def __init__(
        self, steps: int, samples_per_step: int, max_len: int, vocab: TaskVocab = VOCAB, seed: int = 0
    ) -> None:
        self.steps, self.per_step, self.max_len, self.vocab, self.seed = (
            steps,
            samples_per_step,
            max_len,
            vocab,
            seed,
        )

    def __len__(self) -> int:
        return self.steps * self.per_step

    def __getitem__(self, idx: int) -> Sample:
        seq, pairs, n_queries = curriculum(idx // self.per_step, self.steps, self.max_len)
        return _row(mqar(1, seq, pairs, n_queries, vocab=self.vocab, seed=self.seed + idx), False)


class MQARHeads:
    """`num_samples` MQAR samples of `seq_len` tokens with `n_pairs` pairs, for retaining-head training."""

    def __init__(
        self,
        num_samples: int,
        seq_len: int,
        n_pairs: int = 8,
        n_queries: int = 4,
        vocab: TaskVocab = VOCAB,
        seed: int = 10**7,
    ) -> None:
        self.num_samples, self.seq_len, self.n_pairs, self.n_queries = (
            num_samples,
            seq_len,
            n_pairs,
            n_queries,
        )
        self.vocab, self.seed = vocab, seed

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, idx: int) -> Sample:
        sample = mqar(1, self.seq_len, self.n_pairs, self.n_queries, vocab=self.vocab, seed=self.seed + idx)
        return _row(sample, True)


class AdaptiveMQAR:
    """A trainer `BatchSource` (one micro-batch of `per_step` rows per step) whose length stage advances
    when `CurriculumCallback` sees the EMA of the training loss below `threshold`."""

    def __init__(
        self,
        per_step: int,
        max_len: int,
        threshold: float = 0.2,
        max_stage_steps: int = 200,
        vocab: TaskVocab = VOCAB,
        seed: int = 0,
    ) -> None:
        self.per_step, self.max_len, self.vocab, self.seed = per_step, max_len, vocab, seed
        self.threshold, self.max_stage_steps = threshold, max_stage_steps
        lengths = [8, 12, 16, 24, 32, 48, 64, 96, 128, 192, max_len]
        self.lengths = sorted({n for n in lengths if n <= max_len})
        self.stage, self.stage_start, self.ema = 0, 0, float("nan")
        self.log: list[tuple[int, int]] = [(0, self.lengths[0])]  # (step, context length) at each advance

    def update(self, step: int, loss: float) -> None:
        self.ema = loss if self.ema != self.ema else 0.9 * self.ema + 0.1 * loss
        last = self.stage == len(self.lengths) - 1
        long_enough = step - self.stage_start >= 20
        if (
            not last
            and long_enough
            and (self.ema < self.threshold or step - self.stage_start >= self.max_stage_steps)
        ):
            self.stage, self.stage_start, self.ema = self.stage + 1, step + 1, float("nan")
            self.log.append((step + 1, self.lengths[self.stage]))

    def __call__(self, consumed: int) -> Iterator[list[dict[str, Any]]]:
        step = consumed // self.per_step
        while True:
            seq, pairs, n_queries = stage_params(self.lengths[self.stage], self.max_len)
            s = mqar(self.per_step, seq, pairs, n_queries, vocab=self.vocab, seed=self.seed + step)
            yield [{"input_ids": s.input_ids, "labels": s.labels, "loss_mask": s.answer_mask.float()}]
            step += 1


class CurriculumCallback(Callback):
    """Feeds each step's training loss to an `AdaptiveMQAR` and logs its stage's context length."""

    def __init__(self, source: AdaptiveMQAR, final_steps: int = 150) -> None:
        self.source, self.final_steps = source, final_steps
        self.stopped_early = False

    def post_step(self, trainer: Any, step: int, metrics: dict[str, Any]) -> None:
        src = self.source
        src.update(step, float(metrics["train/loss"]))
        final = src.stage == len(src.lengths) - 1
        if final and step - src.stage_start >= self.final_steps and src.ema < src.threshold:
            self.stopped_early = True  # solved at full length: end with a checkpoint
            trainer.request_stop()
        metrics["curriculum/context_len"] = self.source.lengths[self.source.stage]


class PasskeySource:
    """A trainer `BatchSource`: `per_step` passkey rows of `seq_len` tokens per step (fixed length, every
    digit supervised). Learns far faster than MQAR on the tiny model (docs/locret.md, results)."""

    def __init__(
        self, per_step: int, seq_len: int, n_digits: int = 4, vocab: TaskVocab = VOCAB, seed: int = 0
    ) -> None:
        self.per_step, self.seq_len, self.n_digits, self.vocab, self.seed = (
            per_step,
            seq_len,
            n_digits,
            vocab,
            seed,
        )

    def __call__(self, consumed: int) -> Iterator[list[dict[str, Any]]]:
        step = consumed // self.per_step
        while True:
            s = passkey(self.per_step, self.seq_len, self.n_digits, vocab=self.vocab, seed=self.seed + step)
            yield [{"input_ids": s.input_ids, "labels": s.labels, "loss_mask": s.answer_mask.float()}]
            step += 1


class PasskeyHeads:
    """`num_samples` passkey samples of `seq_len` tokens, for retaining-head training."""

    def __init__(
        self, num_samples: int, seq_len: int, n_digits: int = 4, vocab: TaskVocab = VOCAB, seed: int = 10**7
    ) -> None:
        self.num_samples, self.seq_len, self.n_digits, self.vocab, self.seed = (
            num_samples,
            seq_len,
            n_digits,
            vocab,
            seed,
        )

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, idx: int) -> Sample:
        s = passkey(1, self.seq_len, self.n_digits, vocab=self.vocab, seed=self.seed + idx)
        return _row(s, True)
