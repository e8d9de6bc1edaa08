"""Weighted blending of several packed datasets, deterministic by seed.

Sample i of the blend is assigned to a source by merging per-source "arrival times": source d's k-th
sample arrives at `(k + u_d) / w_d` with a seeded phase `u_d` in (0, 1). Taking arrivals in time order
keeps every prefix of the blend within one sample per source of the exact proportions, needs no
Python loop, and depends only on (weights, seed, num_samples).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from densa.data.gpt_dataset import GPTDataset
from densa.errors import DataError


def normalize_weights(weights: Sequence[float]) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or len(w) == 0 or (w < 0).any() or w.sum() <= 0:
        raise DataError(f"blend weights must be non-negative with a positive sum, got {list(weights)}")
    return w / w.sum()


def blend_indices(weights: Sequence[float], num_samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(dataset_index, dataset_sample_index) for each of `num_samples` blended samples."""
    w = normalize_weights(weights)
    phase = np.random.default_rng(seed).uniform(0.01, 0.99, size=len(w))
    times, owners = [], []
    for d, wd in enumerate(w):
        if wd == 0:
            continue
        k = np.arange(math.ceil(wd * num_samples) + 2, dtype=np.float64)
        times.append((k + phase[d]) / wd)
        owners.append(np.full(len(k), d, dtype=np.int64))
    order = np.argsort(np.concatenate(times), kind="stable")[:num_samples]
    dataset_index = np.concatenate(owners)[order]
    dataset_sample_index = np.zeros(num_samples, dtype=np.int64)
    for d in range(len(w)):
        mask = dataset_index == d
        dataset_sample_index[mask] = np.arange(int(mask.sum()))
    return dataset_index, dataset_sample_index


class BlendedDataset:
    """`num_samples` samples drawn from `datasets` in proportion to `weights`."""

    def __init__(
        self, datasets: Sequence, weights: Sequence[float], num_samples: int, seed: int = 1234
    ) -> None:
        if len(datasets) != len(weights):
            raise DataError(f"{len(datasets)} datasets but {len(weights)} blend weights")
        self.datasets, self.num_samples = list(datasets), num_samples
        self.weights = normalize_weights(weights)
        self.dataset_index, self.dataset_sample_index = blend_indices(weights, num_samples, seed)
        for d, ds in enumerate(self.datasets):
            need = int((self.dataset_index == d).sum())
            if need > len(ds):
                raise DataError(f"blend needs {need} samples from source {d} but it has {len(ds)}")

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, idx: int) -> dict:
        if not 0 <= idx < self.num_samples:
            raise IndexError(f"sample {idx} out of range [0, {self.num_samples})")
        return self.datasets[int(self.dataset_index[idx])][int(self.dataset_sample_index[idx])]


def build_pretraining_dataset(
    prefixes: Sequence[str | Path],
    seq_len: int,
    num_samples: int,
    weights: Sequence[float] | None = None,
    seed: int = 1234,
    cache_dir: str | Path | None = "auto",
    tokenizer_fingerprint: str | None = None,
    vocab_size: int | None = None,
):
    """One `GPTDataset`, or a `BlendedDataset` over several, each sized for its share (+0.5% margin).

    Every source is checked against the run's tokenizer fingerprint and vocabulary via its manifest.
    """
    if not prefixes:
        raise DataError("no data prefixes given")
    if len(prefixes) == 1:
        return GPTDataset(
            prefixes[0], seq_len, num_samples, seed, cache_dir, tokenizer_fingerprint, vocab_size
        )
    w = normalize_weights(weights if weights is not None else [1.0] * len(prefixes))
    parts = [
        GPTDataset(
            p,
            seq_len,
            max(1, math.ceil(wd * num_samples * 1.005) + 2),
            seed + 7919 * (d + 1),
            cache_dir,
            tokenizer_fingerprint,
            vocab_size,
        )
        for d, (p, wd) in enumerate(zip(prefixes, w))
    ]
    return BlendedDataset(parts, w, num_samples, seed)
