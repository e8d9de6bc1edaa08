"""Read documents from JSONL, plain-text and parquet inputs, with errors that point at `file:line`.

Plain text: by default a whole file is one document (`text_mode="file"`); `text_mode="paragraph"`
makes every blank-line-separated paragraph a document. Inputs may be folders (read recursively,
sorted, so the order and hence the dataset is deterministic); a `datasets` folder (`save_to_disk`) is
read as one table and a hub cache folder as its snapshot's data files (`densa.data.tables`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from densa.data.tables import iter_table_rows, resolve_dataset_input, saved_dataset_kind, table_columns
from densa.errors import DataError

TEXT_SUFFIXES = {".txt", ".md", ".rst", ".text"}
JSONL_SUFFIXES = {".jsonl", ".json", ".ndjson"}
PARQUET_SUFFIXES = {".parquet"}


@dataclass
class Document:
    text: str
    name: str  # "file:line" or "file", quoted in errors
    nbytes: int = 0  # input bytes consumed, for the progress bar


@dataclass
class ReadStats:
    skipped_lines: int = 0
    skipped_examples: list[str] = field(default_factory=list)

    def skip(self, where: str) -> None:
        self.skipped_lines += 1
        if len(self.skipped_examples) < 10:
            self.skipped_examples.append(where)


def expand_inputs(inputs: list[str | Path]) -> list[Path]:
    """Files named directly plus all files under named folders; missing paths are an error."""
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir() and (resolved := resolve_dataset_input(p)) is not None:
            files += resolved
        elif p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith("."))
        elif p.is_file():
            files.append(p)
        else:
            raise DataError(f"input {p} does not exist")
    if not files:
        raise DataError(f"no input files found in {[str(i) for i in inputs]}")
    return files


def detect_format(path: Path, fmt: str = "auto") -> str:
    if fmt != "auto":
        return fmt
    if saved_dataset_kind(path):
        return "dataset"
    suffix = path.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        return "jsonl"
    if suffix in PARQUET_SUFFIXES:
        return "parquet"
    return "text"


def _decode(raw: bytes, path: Path, line_no: int | None = None, base_offset: int = 0) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        offset = base_offset + err.start
        line = line_no if line_no is not None else raw.count(b"\n", 0, err.start) + 1
        raise DataError(
            f"{path}:{line}: not valid UTF-8 (byte offset {offset}, "
            f"byte {raw[err.start : err.start + 1]!r}); "
            "convert the file to UTF-8"
        ) from None


def iter_jsonl_lines(path: Path) -> Iterator[tuple[str, str, int]]:
    """(`file:line`, decoded text, raw byte length) of every non-blank line of a JSONL file.

    Non-UTF-8 raises `DataError` naming the line and byte offset."""
    offset = 0
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            line = _decode(raw, path, line_no, offset)
            offset += len(raw)
            if line.strip():
                yield f"{path}:{line_no}", line, len(raw)


def read_jsonl(path: Path, key: str = "text", skip_bad_lines: bool = False, stats: ReadStats | None = None):
    """Yield `Document`s from a JSONL file; bad lines raise `DataError` at `file:line` or are skipped."""
    stats = stats if stats is not None else ReadStats()
    for where, line, nbytes in iter_jsonl_lines(path):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            if skip_bad_lines:
                stats.skip(where)
                continue
            raise DataError(f"{where}: malformed JSON ({err.msg} at column {err.colno})") from None
        if not isinstance(record, dict) or key not in record or not isinstance(record[key], str):
            if skip_bad_lines:
                stats.skip(where)
                continue
            if not isinstance(record, dict):
                raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
            if key not in record:
                raise DataError(f"{where}: missing key {key!r} (keys: {sorted(record)[:10]})")
            raise DataError(f"{where}: {key!r} must be a string, got {type(record[key]).__name__}")
        yield Document(record[key], where, nbytes)


def read_text(path: Path, text_mode: str = "file") -> Iterator[Document]:
    """Yield a whole file, or its blank-line-separated paragraphs, as documents."""
    raw = path.read_bytes()
    text = _decode(raw, path)
    if text_mode == "file":
        yield Document(text, str(path), len(raw))
        return
    if text_mode != "paragraph":
        raise DataError(f"text mode must be 'file' or 'paragraph', got {text_mode!r}")
    line_no, para, start = 0, [], 1
    for line_no, line in enumerate(text.splitlines(keepends=True), start=1):
        if line.strip():
            if not para:
                start = line_no
            para.append(line)
        elif para:
            chunk = "".join(para).rstrip("\n")
            yield Document(chunk, f"{path}:{start}", len(chunk.encode("utf-8")))
            para = []
    if para:
        chunk = "".join(para).rstrip("\n")
        yield Document(chunk, f"{path}:{start}", len(chunk.encode("utf-8")))


def read_parquet(path: Path, key: str = "text", streaming: bool = False) -> Iterator[Document]:
    """Rows of a local parquet file through `datasets` (streaming keeps memory flat for big files)."""
    import datasets

    try:
        ds = datasets.load_dataset("parquet", data_files=str(path), split="train", streaming=streaming)
    except Exception as err:  # datasets/pyarrow raise many types
        raise DataError(f"{path}: cannot read parquet: {err}") from None
    columns = list(ds.features or {}) if ds.features else None
    if columns is not None and key not in columns:
        raise DataError(f"{path}: no column {key!r} (columns: {columns})")
    for row_no, row in enumerate(ds, start=1):
        value = row.get(key)
        if not isinstance(value, str):
            raise DataError(f"{path}:row {row_no}: {key!r} must be a string, got {type(value).__name__}")
        yield Document(value, f"{path}:row {row_no}", len(value.encode("utf-8")))


def read_saved_dataset(path: Path, key: str = "text") -> Iterator[Document]:
    """Rows of a `datasets` folder (`save_to_disk`); `key` names the text column."""
    columns = table_columns(path)
    if key not in columns:
        raise DataError(f"{path}: no column {key!r} (columns: {columns}); pick one with --key")
    for where, row in iter_table_rows(path, [key]):
        value = row[key]
        if not isinstance(value, str):
            raise DataError(f"{where}: {key!r} must be a string, got {type(value).__name__}")
        yield Document(value, where, len(value.encode("utf-8")))


def iter_documents(
    files: list[Path],
    fmt: str = "auto",
    key: str = "text",
    text_mode: str = "file",
    streaming: bool = False,
    skip_bad_lines: bool = False,
    stats: ReadStats | None = None,
) -> Iterator[Document]:
    """All documents of all files, in order."""
    for path in files:
        kind = detect_format(path, fmt)
        if kind == "jsonl":
            yield from read_jsonl(path, key, skip_bad_lines, stats)
        elif kind == "text":
            yield from read_text(path, text_mode)
        elif kind == "parquet":
            yield from read_parquet(path, key, streaming)
        elif kind == "dataset":
            yield from read_saved_dataset(path, key)
        else:
            raise DataError(f"unknown input format {kind!r} (use jsonl, text, parquet or dataset)")
