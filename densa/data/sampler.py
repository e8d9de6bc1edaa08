"""Resumable, data-parallel batch iteration over a map-style dataset.

The whole iteration state is `consumed_samples` (global samples already used): global batch b covers
samples `[consumed, consumed + global_batch_size)` in dataset order, rank r of w takes the contiguous
slice `[r*n, (r+1)*n)` of it (n = global_batch_size / w) and splits it into micro-batches. The result
does not depend on DataLoader internals, so resume after a crash or with a new process is exact.
"""

from __future__ import annotations

from collections.abc import Iterator

from densa.errors import DataError


def rank_batch_indices(
    consumed_samples: int, global_batch_size: int, micro_batch_size: int, dp_rank: int, dp_world: int
) -> list[list[int]]:
    """Sample indices of this rank's micro-batches for the global batch starting at `consumed_samples`."""
    per_rank = global_batch_size // dp_world
    start = consumed_samples + dp_rank * per_rank
    return [list(range(s, s + micro_batch_size)) for s in range(start, start + per_rank, micro_batch_size)]


def collate(samples: list[dict]) -> dict:
    """Stack a list of sample dicts of tensors into one dict of batched tensors."""
    import torch

    return {k: torch.stack([s[k] for s in samples]) for k in samples[0]}


class BatchIterator:
    """Yields, per training step, this rank's list of micro-batches (dicts of `[micro_batch, seq_len]`).

    `consumed_samples` advances by `global_batch_size` after each step's batches are produced; save it
    with the checkpoint and pass it back to resume. Iteration stops when the dataset cannot fill
    another whole global batch.
    """

    def __init__(
        self,
        dataset,
        global_batch_size: int,
        micro_batch_size: int,
        dp_rank: int = 0,
        dp_world: int = 1,
        consumed_samples: int = 0,
    ) -> None:
        if not 0 <= dp_rank < dp_world:
            raise DataError(f"dp_rank {dp_rank} not in [0, {dp_world})")
        if micro_batch_size <= 0 or global_batch_size % (micro_batch_size * dp_world):
            raise DataError(
                f"global_batch_size {global_batch_size} must be a multiple of "
                f"micro_batch_size {micro_batch_size} x dp_world {dp_world}"
            )
        if consumed_samples % global_batch_size:
            raise DataError(f"consumed_samples {consumed_samples} is not a multiple of {global_batch_size}")
        self.dataset = dataset
        self.global_batch_size, self.micro_batch_size = global_batch_size, micro_batch_size
        self.dp_rank, self.dp_world = dp_rank, dp_world
        self.consumed_samples = consumed_samples

    @property
    def grad_accum_steps(self) -> int:
        return self.global_batch_size // (self.micro_batch_size * self.dp_world)

    def __len__(self) -> int:
        """Steps left."""
        return max(0, (len(self.dataset) - self.consumed_samples) // self.global_batch_size)

    def state_dict(self) -> dict:
        return {"consumed_samples": self.consumed_samples}

    def __iter__(self) -> Iterator[list[dict]]:
        while self.consumed_samples + self.global_batch_size <= len(self.dataset):
            idx = rank_batch_indices(
                self.consumed_samples,
                self.global_batch_size,
                self.micro_batch_size,
                self.dp_rank,
                self.dp_world,
            )
            micro = [collate([self.dataset[i] for i in mb]) for mb in idx]
            self.consumed_samples += self.global_batch_size
            yield micro


def iterate_batches(
    dataset,
    global_batch_size: int,
    micro_batch_size: int,
    dp_rank: int = 0,
    dp_world: int = 1,
    consumed_samples: int = 0,
) -> BatchIterator:
    """Shorthand for `BatchIterator(...)`; see its docstring."""
    return BatchIterator(dataset, global_batch_size, micro_batch_size, dp_rank, dp_world, consumed_samples)
