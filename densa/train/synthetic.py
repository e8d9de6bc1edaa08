"""A deterministic synthetic token dataset for smoke runs, tests and benchmarks (no files needed).

Sample i is an arithmetic progression modulo the vocabulary with a start and stride drawn from a
generator seeded by (seed, i): learnable (the loss falls within tens of steps) and identical on every
rank and after every resume, since it depends only on the sample index.
"""

from __future__ import annotations

import torch


class SyntheticDataset:
    """`ds[i]` -> {"input_ids", "labels", "loss_mask"} of length `seq_len`."""

    def __init__(self, vocab_size: int, seq_len: int, num_samples: int = 1 << 30, seed: int = 0) -> None:
        self.vocab_size, self.seq_len, self.num_samples, self.seed = vocab_size, seq_len, num_samples, seed

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, idx: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + idx)
        start = int(torch.randint(self.vocab_size, (1,), generator=g))
        stride = int(torch.randint(1, 4, (1,), generator=g))
        tokens = (start + stride * torch.arange(self.seq_len + 1)) % self.vocab_size
        return {
            "input_ids": tokens[:-1],
            "labels": tokens[1:],
            "loss_mask": torch.ones(self.seq_len, dtype=torch.float32),
        }
