"""Training and validation data for a run, built from the recipe through `densa.data`.

The trainer consumes `BatchSource = Callable[[int], Iterator[list[Batch]]]`: given `consumed_samples`
it yields, per step, this DP rank's micro-batches. That one integer is the whole data position, so
resume is exact (the packed/blended indices are deterministic by seed). Tests may pass any such callable.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from densa.config.schema import RunConfig
from densa.data.blend import build_pretraining_dataset
from densa.data.sampler import BatchIterator
from densa.errors import DataError

Batch = dict[str, Any]
BatchSource = Callable[[int], Iterator[list[Batch]]]


class EpochDataset:
    """`num_samples` samples cycling over `dataset`, reshuffled every epoch by seed (for SFT, which is
    shorter than a run). Deterministic, so a sample index means the same example after resume."""

    def __init__(self, dataset, num_samples: int, seed: int) -> None:
        if len(dataset) == 0:
            raise DataError("the dataset is empty")
        self.dataset, self.num_samples, self.seed = dataset, num_samples, seed
        self._perms: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, idx: int) -> Batch:
        epoch, pos = divmod(idx, len(self.dataset))
        if epoch not in self._perms:
            self._perms[epoch] = np.random.default_rng([self.seed, epoch]).permutation(len(self.dataset))
        return self.dataset[int(self._perms[epoch][pos])]


def load_run_tokenizer(cfg: RunConfig):
    if cfg.data.tokenizer is None:
        return None
    from densa.data.tokenizer import load_tokenizer

    return load_tokenizer(cfg.data.tokenizer)


def build_dataset(cfg: RunConfig, sources, num_samples: int, seed: int, tokenizer=None):
    """A map-style dataset of `num_samples` samples ({input_ids, labels, loss_mask}) for `sources`."""
    if not sources:
        raise DataError("no datasets given")
    if cfg.data.format == "sft":
        from densa.data.sft import SFTDataset

        if tokenizer is None:
            raise DataError("data.format sft needs data.tokenizer (the SFT data holds text)")
        parts = [SFTDataset(s.path, tokenizer, cfg.data.seq_len) for s in sources]
        if cfg.data.pack:  # rows are formed once by seed; EpochDataset then shuffles rows per epoch
            from densa.data.packing import PackedSFTDataset

            parts = [PackedSFTDataset(p, seed + i) for i, p in enumerate(parts)]
        if len(parts) == 1:
            return EpochDataset(parts[0], num_samples, seed)
        from densa.data.blend import BlendedDataset

        sizes = [EpochDataset(p, num_samples, seed + i) for i, p in enumerate(parts)]
        return BlendedDataset(sizes, [s.weight for s in sources], num_samples, seed)
    return build_pretraining_dataset(
        [s.path for s in sources],
        cfg.data.seq_len,
        num_samples,
        weights=[s.weight for s in sources],
        seed=seed,
        tokenizer_fingerprint=tokenizer.fingerprint if tokenizer is not None else None,
        vocab_size=cfg.model.vocab_size,
    )


def train_source(
    cfg: RunConfig, global_samples: int, micro_batch: int, dp_rank: int, dp_size: int, tokenizer=None
) -> BatchSource:
    """The run's training data as a `BatchSource` (sized for train.steps global batches)."""
    dataset = build_dataset(cfg, cfg.data.train, cfg.train.steps * global_samples, cfg.run.seed, tokenizer)

    def batches(consumed_samples: int) -> Iterator[list[Batch]]:
        return iter(BatchIterator(dataset, global_samples, micro_batch, dp_rank, dp_size, consumed_samples))

    return batches


def valid_batches(
    cfg: RunConfig, micro_batch: int, dp_rank: int, dp_size: int, tokenizer=None
) -> Callable[[], list[Batch]] | None:
    """The first eval.max_batches micro-batches of this DP rank's share of the validation data."""
    if not cfg.data.valid:
        return None
    per_pass = cfg.eval.max_batches * micro_batch * dp_size
    dataset = build_dataset(cfg, cfg.data.valid, per_pass, cfg.run.seed + 1, tokenizer)
    cached: list[Batch] = []

    def batches() -> list[Batch]:
        if not cached:
            it = BatchIterator(dataset, per_pass, micro_batch, dp_rank, dp_size, 0)
            cached.extend(next(iter(it)))
        return cached

    return batches
