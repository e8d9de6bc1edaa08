"""Tabular inputs users have: parquet files, `datasets` folders (`save_to_disk`) and local hub caches.

- a **parquet** file is read with pyarrow in record batches (no cache copy, flat memory);
- a **`datasets` folder** is what `Dataset.save_to_disk` writes (`state.json` + `dataset_info.json`) or
  `DatasetDict.save_to_disk` (`dataset_dict.json`; its `train` split is used, or name the split's
  sub-folder); it is memory-mapped with `datasets.load_from_disk`;
- a **hub cache folder** is a dataset repository as `huggingface_hub` caches it
  (`datasets--ORG--NAME/` with `refs/main` and `snapshots/REV/`): its snapshot's data files are used
  (parquet or JSONL; when file names carry split names, only `train` files); `data_files` does the
  same for any folder of such files.

Rows come with a `where` label (`file:row N`, 1-based) that error messages quote. Nothing here touches
the network.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from densa.errors import DataError

DATA_SUFFIXES = {".parquet", ".jsonl", ".json", ".ndjson"}
_SPLIT_WORD = re.compile(r"(^|[/_.\-])(train|training|test|testing|eval|valid|validation|dev)([/_.\-]|$)")
_TRAIN_WORD = re.compile(r"(^|[/_.\-])(train|training)([/_.\-]|$)")


def saved_dataset_kind(path: Path) -> str | None:
    """`"dataset"` or `"dict"` for a folder written by `save_to_disk`, else None."""
    if not path.is_dir():
        return None
    if (path / "dataset_dict.json").is_file():
        return "dict"
    if (path / "state.json").is_file() and (path / "dataset_info.json").is_file():
        return "dataset"
    return None


def hub_snapshot(path: Path) -> Path | None:
    """The snapshot folder of a hub-cache dataset folder (`refs/main`, else the only snapshot), or None."""
    snapshots = path / "snapshots"
    if not path.is_dir() or not snapshots.is_dir():
        return None
    ref = path / "refs" / "main"
    if ref.is_file():
        snap = snapshots / ref.read_text(encoding="utf-8").strip()
        if snap.is_dir():
            return snap
    revs = sorted(p for p in snapshots.iterdir() if p.is_dir())
    if len(revs) != 1:
        raise DataError(
            f"{path}: hub cache folder without refs/main and with {len(revs)} snapshots; "
            "name the snapshot folder (snapshots/REV) instead"
        )
    return revs[0]


def data_files(snapshot: Path) -> list[Path]:
    """Parquet/JSONL files under a folder (a hub snapshot), sorted; only the `train` ones when names
    carry split names (HF's convention: `train-00000-of-00001.parquet`, `data/train.jsonl`, `train/`)."""
    files = sorted(
        p
        for p in snapshot.rglob("*")
        if p.is_file() and p.suffix.lower() in DATA_SUFFIXES and not p.name.startswith(".")
    )
    rel = [p.relative_to(snapshot).as_posix().lower() for p in files]
    if any(_SPLIT_WORD.search(r) for r in rel):
        files = [p for p, r in zip(files, rel) if _TRAIN_WORD.search(r)]
    if not files:
        raise DataError(f"{snapshot}: no parquet or JSONL files (of the train split) in this folder")
    return files


def load_saved(path: Path):
    """The `datasets.Dataset` of a `save_to_disk` folder (a DatasetDict gives its `train` split)."""
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as err:  # datasets raises many types for damaged folders
        raise DataError(f"{path}: cannot load the datasets folder: {err}") from None
    if isinstance(ds, datasets.DatasetDict):
        if "train" not in ds:
            raise DataError(
                f"{path}: DatasetDict without a 'train' split (splits: {sorted(ds)}); "
                f"name a split folder, e.g. {path / sorted(ds)[0]}"
            )
        ds = ds["train"]
    return ds


def table_columns(path: Path) -> list[str]:
    """Column names of a parquet file or `datasets` folder."""
    if saved_dataset_kind(path):
        return list(load_saved(path).column_names)
    import pyarrow.parquet as pq

    try:
        return list(pq.read_schema(path).names)
    except Exception as err:  # pyarrow raises ArrowInvalid, OSError, ...
        raise DataError(f"{path}: cannot read parquet: {err}") from None


def iter_table_rows(path: Path, columns: list[str] | None = None) -> Iterator[tuple[str, dict]]:
    """(`file:row N`, row dict) of a parquet file or `datasets` folder, in order."""
    if saved_dataset_kind(path):
        ds = load_saved(path)
        if columns is not None:
            ds = ds.select_columns(columns)
        for row_no, row in enumerate(ds, start=1):
            yield f"{path}:row {row_no}", row
        return
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as err:
        raise DataError(f"{path}: cannot read parquet: {err}") from None
    row_no = 0
    for batch in pf.iter_batches(batch_size=1024, columns=columns):
        for row in batch.to_pylist():
            row_no += 1
            yield f"{path}:row {row_no}", row


def resolve_dataset_input(path: Path) -> list[Path] | None:
    """Files or folders to read for `path` when it is a `datasets` folder or hub cache, else None."""
    if saved_dataset_kind(path):
        return [path]
    snap = hub_snapshot(path)
    if snap is not None:
        return data_files(snap)
    return None
