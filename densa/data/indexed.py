"""Megatron-compatible `.bin/.idx` (MMIDIDX) token files: our own writer and memory-mapped reader.

The layout follows `megatron/core/datasets/indexed_dataset.py` byte for byte so that megatron-core,
gpt-neox and Megatron-DeepSpeed tooling can read what we write, without us needing their code:

    .idx = b"MMIDIDX\\x00\\x00" | <Q version=1 | <B dtype code | <Q sequence count | <Q document count
           | int32 sequence lengths | int64 byte pointers | int64 document indices
    .bin = concatenated token ids in the dtype

We store one sequence per document, so document indices are `0, 1, ..., n`.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

from densa.errors import DataError

INDEX_HEADER = b"MMIDIDX\x00\x00"
INDEX_VERSION = 1
# Megatron's DType enum codes.
DTYPE_CODES: dict[type, int] = {
    np.uint8: 1,
    np.int8: 2,
    np.int16: 3,
    np.int32: 4,
    np.int64: 5,
    np.float64: 6,
    np.float32: 7,
    np.uint16: 8,
}
CODE_DTYPES = {code: dtype for dtype, code in DTYPE_CODES.items()}
UINT16_MAX_VOCAB = 65536


def dtype_for_vocab(vocab_size: int) -> type:
    """uint16 holds ids 0..65535, i.e. a vocabulary of at most 65,536 entries; int32 beyond.

    The exact boundary matters: silent uint16 truncation corrupted multilingual datasets elsewhere.
    """
    if vocab_size <= 0:
        raise DataError(f"vocab_size must be positive, got {vocab_size}")
    return np.uint16 if vocab_size <= UINT16_MAX_VOCAB else np.int32


def data_paths(prefix: str | Path) -> tuple[Path, Path]:
    """The `.bin` and `.idx` paths of a dataset prefix."""
    prefix = str(prefix)
    return Path(prefix + ".bin"), Path(prefix + ".idx")


def tmp_path_for(path: Path) -> Path:
    """Where a file is written before the atomic rename (same folder, so `os.replace` is atomic)."""
    return path.with_name(path.name + f".tmp{os.getpid()}")


class IndexedWriter:
    """Streams documents into `<prefix>.bin/.idx` via temp files; `finalize` renames them into place.

    Every id is checked against `vocab_size` before it is written, so an oversize id can never be
    truncated silently. Use as a context manager: leaving the block by an exception removes the temp
    files, leaving no half-written dataset behind.
    """

    def __init__(self, prefix: str | Path, vocab_size: int, dtype: type | None = None) -> None:
        self.vocab_size = int(vocab_size)
        self.dtype = dtype or dtype_for_vocab(self.vocab_size)
        if self.dtype not in DTYPE_CODES:
            raise DataError(f"unsupported token dtype {self.dtype}")
        if self.dtype == np.uint16 and self.vocab_size > UINT16_MAX_VOCAB:
            raise DataError(f"uint16 cannot hold a vocabulary of {self.vocab_size} (max {UINT16_MAX_VOCAB})")
        self.bin_path, self.idx_path = data_paths(prefix)
        self.bin_path.parent.mkdir(parents=True, exist_ok=True)
        self._bin_tmp = tmp_path_for(self.bin_path)
        self._idx_tmp = tmp_path_for(self.idx_path)
        self._bin = open(self._bin_tmp, "wb")  # noqa: SIM115 - closed by finalize/abort
        self._lengths: list[int] = []
        self.num_tokens = 0

    def add_document(self, ids: list[int] | np.ndarray, name: str = "") -> None:
        """Append one document; `name` (e.g. `file:line`) is quoted in the error for a bad id."""
        arr = np.asarray(ids, dtype=np.int64)
        if arr.size and (arr.max() >= self.vocab_size or arr.min() < 0):
            bad = int(arr.max()) if arr.max() >= self.vocab_size else int(arr.min())
            where = f" in document {name}" if name else f" in document #{len(self._lengths)}"
            raise DataError(f"token id {bad}{where} is outside the vocabulary [0, {self.vocab_size})")
        self._bin.write(arr.astype(self.dtype).tobytes(order="C"))
        self._lengths.append(int(arr.size))
        self.num_tokens += int(arr.size)

    @property
    def num_documents(self) -> int:
        return len(self._lengths)

    def finalize(self) -> None:
        """Write the index and atomically move both files into place."""
        self._bin.close()
        lengths = np.asarray(self._lengths, dtype=np.int32)
        itemsize = np.dtype(self.dtype).itemsize
        pointers = np.zeros(len(lengths), dtype=np.int64)
        if len(lengths) > 1:
            pointers[1:] = np.cumsum(lengths[:-1].astype(np.int64)) * itemsize
        doc_idx = np.arange(len(lengths) + 1, dtype=np.int64)
        with open(self._idx_tmp, "wb") as f:
            f.write(INDEX_HEADER)
            f.write(struct.pack("<Q", INDEX_VERSION))
            f.write(struct.pack("<B", DTYPE_CODES[self.dtype]))
            f.write(struct.pack("<Q", len(lengths)))
            f.write(struct.pack("<Q", len(doc_idx)))
            f.write(lengths.tobytes(order="C"))
            f.write(pointers.tobytes(order="C"))
            f.write(doc_idx.tobytes(order="C"))
        os.replace(self._bin_tmp, self.bin_path)
        os.replace(self._idx_tmp, self.idx_path)

    def abort(self) -> None:
        """Close and delete the temp files."""
        self._bin.close()
        for p in (self._bin_tmp, self._idx_tmp):
            p.unlink(missing_ok=True)

    def __enter__(self) -> IndexedWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()


class IndexedDataset:
    """Read-only, memory-mapped view of `<prefix>.bin/.idx`; `ds[i]` is document i as a numpy array."""

    def __init__(self, prefix: str | Path) -> None:
        self.prefix = str(prefix)
        self.bin_path, self.idx_path = data_paths(prefix)
        for p in (self.bin_path, self.idx_path):
            if not p.exists():
                raise DataError(f"dataset file {p} does not exist (run `densa data preprocess` first)")
            if not p.is_file():
                raise DataError(f"dataset file {p} is a folder, not a file (run `densa data preprocess`)")
        with open(self.idx_path, "rb") as f:
            header = f.read(len(INDEX_HEADER))
            if header != INDEX_HEADER:
                raise DataError(f"{self.idx_path} is not an MMIDIDX index (header {header!r})")
            fields = f.read(8 + 1 + 8 + 8)
            if len(fields) < 25:
                raise DataError(
                    f"{self.idx_path}: truncated index header ({len(header) + len(fields)} bytes)"
                )
            version, code, seq_count, doc_count = struct.unpack("<QBQQ", fields)
            if version != INDEX_VERSION:
                raise DataError(f"{self.idx_path}: unsupported index version {version}")
            if code not in CODE_DTYPES:
                raise DataError(f"{self.idx_path}: unknown dtype code {code}")
            self.dtype = CODE_DTYPES[code]
            offset = f.tell()
        expected = offset + seq_count * (4 + 8) + doc_count * 8
        idx_size = self.idx_path.stat().st_size
        if idx_size != expected:
            raise DataError(
                f"{self.idx_path}: {idx_size} bytes, but its header ({seq_count} sequences, {doc_count} "
                f"document indices) needs {expected}: the index is truncated or damaged; preprocess again"
            )
        idx = np.memmap(self.idx_path, mode="r", order="C") if idx_size else np.zeros(0, np.uint8)
        self.sequence_lengths = np.frombuffer(idx, dtype=np.int32, count=seq_count, offset=offset)
        offset += self.sequence_lengths.nbytes
        self.sequence_pointers = np.frombuffer(idx, dtype=np.int64, count=seq_count, offset=offset)
        offset += self.sequence_pointers.nbytes
        self.document_indices = np.frombuffer(idx, dtype=np.int64, count=doc_count, offset=offset)
        self._check_bin()
        # np.memmap refuses an empty file; an empty dataset is still a valid (if useless) one.
        size = self.bin_path.stat().st_size
        self._bin = (
            np.memmap(self.bin_path, dtype=self.dtype, mode="r", order="C")
            if size
            else np.zeros(0, self.dtype)
        )

    def _check_bin(self) -> None:
        """The `.bin` must hold exactly the tokens the index describes: a truncated copy, a file cut at an
        odd byte, or an index from another dataset fails here instead of yielding wrong samples."""
        itemsize = np.dtype(self.dtype).itemsize
        size = self.bin_path.stat().st_size
        if size % itemsize:
            raise DataError(
                f"{self.bin_path}: {size} bytes is not a multiple of the token size {itemsize} "
                f"({np.dtype(self.dtype).name}): the file is truncated or damaged; preprocess again"
            )
        lengths, pointers = self.sequence_lengths, self.sequence_pointers
        if len(lengths) and int(lengths.min()) < 0:
            raise DataError(
                f"{self.idx_path}: negative sequence lengths: the index is damaged; preprocess again"
            )
        tokens = int(lengths.sum(dtype=np.int64))
        end = int(pointers[-1]) + int(lengths[-1]) * itemsize if len(lengths) else 0
        if tokens * itemsize != size or end != size or (len(pointers) and int(pointers.min()) < 0):
            what = "truncated" if max(tokens * itemsize, end) > size else "longer than its index"
            raise DataError(
                f"{self.bin_path} holds {size // itemsize} tokens but {self.idx_path.name} describes "
                f"{tokens} in {len(lengths)} documents: the .bin is {what}, or the .idx belongs to another "
                "dataset; preprocess again"
            )

    def max_token_id(self, chunk_tokens: int = 1 << 24) -> int:
        """The largest id in the `.bin` (-1 when empty); reads the whole file in chunks."""
        best = -1
        for start in range(0, len(self._bin), chunk_tokens):
            best = max(best, int(self._bin[start : start + chunk_tokens].max()))
        return best

    def __len__(self) -> int:
        return len(self.sequence_lengths)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.get(i)

    def get(self, i: int, offset: int = 0, length: int | None = None) -> np.ndarray:
        """Tokens `[offset, offset+length)` of sequence i, without reading the rest of the file."""
        if not 0 <= i < len(self):
            raise IndexError(f"sequence {i} out of range [0, {len(self)})")
        size = int(self.sequence_lengths[i])
        length = size - offset if length is None else length
        start = int(self.sequence_pointers[i]) // np.dtype(self.dtype).itemsize + offset
        return np.asarray(self._bin[start : start + length])

    @property
    def num_tokens(self) -> int:
        return int(self.sequence_lengths.sum(dtype=np.int64))
