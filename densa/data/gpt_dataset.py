"""Fixed-length pretraining samples packed across document boundaries (Megatron GPTDataset semantics).

Three indices define the dataset, built once and cached on disk:

- document index: every document id once per epoch, each epoch shuffled by the seed;
- sample index: `(position in document index, token offset)` where sample i starts; sample i covers
  tokens `[i*seq_len, (i+1)*seq_len]` of the concatenated stream (seq_len+1 tokens, the last one shared
  with the next sample), so inputs and shifted labels both have `seq_len` tokens;
- shuffle index: a seeded permutation of the samples.

The cache key hashes the data prefix with the file sizes and mtimes, so re-preprocessing invalidates it.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np

from densa.data.indexed import IndexedDataset
from densa.data.manifest import check_manifest_matches, manifest_path, read_manifest
from densa.errors import DataError

INDEX_VERSION = 1
SCAN_BYTES = 256 << 20
"""`.bin` files up to this size are scanned for ids >= the model's vocabulary when opened (~0.1 s);
larger ones are checked sample by sample as they are read."""


def index_cache_key(prefix: str | Path, seq_len: int, seed: int, num_samples: int) -> str:
    """Hash of everything the indices depend on."""
    prefix = str(Path(prefix).resolve())
    stats = [(os.stat(prefix + s).st_size, os.stat(prefix + s).st_mtime_ns) for s in (".bin", ".idx")]
    desc = json.dumps([INDEX_VERSION, prefix, stats, seq_len, seed, num_samples])
    return hashlib.sha256(desc.encode()).hexdigest()[:24]


def build_indices(
    lengths: np.ndarray, seq_len: int, num_samples: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(doc_idx, sample_idx, shuffle_idx) for `num_samples` samples of `seq_len`+1 tokens."""
    lengths = np.asarray(lengths, dtype=np.int64)
    tokens_per_epoch = int(lengths.sum())
    if tokens_per_epoch <= 1:
        raise DataError("dataset has at most one token: nothing to train on")
    needed = num_samples * seq_len + 1
    num_epochs = -(-needed // tokens_per_epoch)
    rng = np.random.default_rng(seed)
    doc_idx = np.concatenate([rng.permutation(len(lengths)) for _ in range(num_epochs)]).astype(np.int64)
    ends = np.cumsum(lengths[doc_idx])
    starts = np.arange(num_samples + 1, dtype=np.int64) * seq_len
    pos = np.searchsorted(ends, starts, side="right")
    # a start exactly at the end of the stream (only the final boundary) stays in the last document
    pos = np.minimum(pos, len(doc_idx) - 1)
    offsets = starts - np.concatenate([[0], ends])[pos]
    sample_idx = np.stack([pos, offsets], axis=1).astype(np.int64)
    shuffle_idx = np.random.default_rng(seed + 1).permutation(num_samples).astype(np.int64)
    return doc_idx, sample_idx, shuffle_idx


def fallback_cache_dir() -> Path:
    """Where index caches go when the data folder is not writable: `$DENSA_CACHE/index_cache` (default
    `~/.cache/densa/index_cache`), the cache root `densa data fetch` and the kernels use too."""
    from densa.data.fetch import cache_root

    return cache_root() / "index_cache"


def _cache_names(cache_dir: Path, key: str) -> list[Path]:
    return [cache_dir / f"{key}-{n}.npy" for n in ("doc_idx", "sample_idx", "shuffle_idx")]


def _write_cache(cache_dir: Path, key: str, arrays, desc: dict) -> None:
    """Write the three arrays (temp file + rename each); a failure leaves no temp file behind."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    for path, arr in zip(_cache_names(cache_dir, key), arrays):
        tmp = path.with_name(path.name + f".tmp{os.getpid()}.npy")
        try:
            np.save(tmp, arr)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    (cache_dir / f"{key}-description.json").write_text(json.dumps(desc, indent=2) + "\n")


def _load_or_build(ds: IndexedDataset, seq_len: int, num_samples: int, seed: int, cache_dir: Path | None):
    """The indices from the cache (next to the data, else the fallback cache dir), or built and cached.

    A data folder densa cannot write to (read-only mount, shared dataset) is not an error: the cache goes
    to `fallback_cache_dir()` instead, and if that fails too the indices are only kept in memory (they are
    deterministic, so nothing but the build time is lost). Each fallback prints one line on stderr."""
    if cache_dir is None:
        return build_indices(ds.sequence_lengths, seq_len, num_samples, seed)
    key = index_cache_key(ds.prefix, seq_len, seed, num_samples)
    dirs = [cache_dir, fallback_cache_dir()]
    for folder in dirs:
        names = _cache_names(folder, key)
        if all(p.is_file() for p in names):
            return tuple(np.load(p, mmap_mode="r") for p in names)
    arrays = build_indices(ds.sequence_lengths, seq_len, num_samples, seed)
    desc = {"prefix": ds.prefix, "seq_len": seq_len, "seed": seed, "num_samples": num_samples}
    problems = []
    for folder in dirs:
        try:
            _write_cache(folder, key, arrays, desc)
        except OSError as err:
            problems.append(f"{folder} ({err.strerror or err})")
            continue
        if problems:
            print(
                f"densa: warning: cannot write the index cache to {problems[0]}; using {folder}",
                file=sys.stderr,
            )
        return arrays
    print(
        f"densa: warning: cannot write the index cache to {' or '.join(problems)}; keeping it in memory",
        file=sys.stderr,
    )
    return arrays


class GPTDataset:
    """`ds[i]` -> `{"input_ids", "labels", "loss_mask"}` torch tensors of length `seq_len`.

    `tokenizer_fingerprint`/`vocab_size` (the run's) are checked against the manifest; pass
    `check_manifest=False` only for data made by other tools (no manifest).
    """

    def __init__(
        self,
        prefix: str | Path,
        seq_len: int,
        num_samples: int,
        seed: int = 1234,
        cache_dir: str | Path | None = "auto",
        tokenizer_fingerprint: str | None = None,
        vocab_size: int | None = None,
        check_manifest: bool = True,
    ) -> None:
        if seq_len <= 0 or num_samples <= 0:
            raise DataError(f"seq_len and num_samples must be positive, got {seq_len}, {num_samples}")
        self.prefix, self.seq_len, self.num_samples, self.seed = str(prefix), seq_len, num_samples, seed
        self.indexed = IndexedDataset(prefix)
        if check_manifest:
            self.manifest = read_manifest(prefix)
            idx, mpath = self.indexed.idx_path, manifest_path(prefix)
            counts = {
                "documents": (self.manifest.num_documents, len(self.indexed)),
                "tokens": (self.manifest.num_tokens, self.indexed.num_tokens),
                "dtype": (self.manifest.dtype, np.dtype(self.indexed.dtype).name),
            }
            for what, (said, found) in counts.items():
                if said != found:
                    raise DataError(
                        f"{mpath} records {what} = {said} but {idx} has {found}: the files come from "
                        "different datasets or preprocess runs; preprocess again"
                    )
            check_manifest_matches(self.manifest, tokenizer_fingerprint, vocab_size, name=str(prefix))
        self.vocab_size = vocab_size
        if vocab_size is not None and self.indexed.bin_path.stat().st_size <= SCAN_BYTES:
            self._check_ids(self.indexed.max_token_id(), "")
        if cache_dir == "auto":
            cache_dir = Path(str(prefix) + "_index_cache")
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.doc_idx, self.sample_idx, self.shuffle_idx = _load_or_build(
            self.indexed, seq_len, num_samples, seed, self.cache_dir
        )

    def __len__(self) -> int:
        return self.num_samples

    def tokens(self, idx: int) -> np.ndarray:
        """The `seq_len+1` token ids of (shuffled) sample `idx`."""
        if not 0 <= idx < self.num_samples:
            raise IndexError(f"sample {idx} out of range [0, {self.num_samples})")
        i = int(self.shuffle_idx[idx])
        (d0, off0), (d1, off1) = self.sample_idx[i], self.sample_idx[i + 1]
        d0, off0, d1, off1 = int(d0), int(off0), int(d1), int(off1)
        if d0 == d1:
            return self.indexed.get(int(self.doc_idx[d0]), off0, off1 - off0 + 1)
        parts = [self.indexed.get(int(self.doc_idx[d0]), off0)]
        parts += [self.indexed.get(int(self.doc_idx[d])) for d in range(d0 + 1, d1)]
        parts.append(self.indexed.get(int(self.doc_idx[d1]), 0, off1 + 1))
        return np.concatenate(parts)

    def _check_ids(self, max_id: int, where: str) -> None:
        if self.vocab_size is not None and max_id >= self.vocab_size:
            raise DataError(
                f"{self.indexed.bin_path}: token id {max_id}{where} is >= the model's vocab_size "
                f"{self.vocab_size}; the data was tokenized for another vocabulary"
            )

    def __getitem__(self, idx: int) -> dict:
        import torch

        ids = self.tokens(idx)
        if self.vocab_size is not None and len(ids):  # large files are not scanned up front
            self._check_ids(int(ids.max()), f" (in sample {idx})")
        tokens = torch.from_numpy(ids.astype(np.int64))
        return {
            "input_ids": tokens[:-1],
            "labels": tokens[1:],
            "loss_mask": torch.ones(self.seq_len, dtype=torch.float32),
        }
