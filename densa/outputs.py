"""Where densa may write: never into what a command reads, and never over a folder densa did not write.

Every folder written through `densa.models.checkpoint_io.atomic_dir` (densa model folders, HF exports,
MoE checkpoints) carries a `.densa-output` marker (JSON: writer, densa version, kind). `--overwrite`
(and the end-of-training re-export to `export.hf_dir`) replaces only an empty folder or a folder with the
marker; anything else is refused before a byte is written. Folders written by densa before the marker
existed (0.1.0 and earlier) have none and are refused too: the message says to remove them by hand.

`check_destination(dest, sources)` refuses a destination that is, contains or lies inside a folder being
read, or is or contains a file being read. A run directory is special: writing `RUN/hf` beside the run's
files is normal, so for a run only the directory itself, its ancestors and `RUN/checkpoints` are off limits.
Paths are compared after resolving symlinks.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple

from densa.errors import DensaError

MARKER = ".densa-output"
CHECKPOINTS = "checkpoints"  # densa.train.checkpoint's folder under a run dir


class DestinationError(DensaError):
    """An output path would replace or modify something densa reads or did not write."""


class Source(NamedTuple):
    label: str
    """What it is, for the message: "run directory", "source folder", "tokenizer"..."""
    path: str | os.PathLike
    kind: str = "folder"
    """"folder": off limits from inside too; "file": only itself and its ancestors; "run": see module doc."""


def resolved(path: str | os.PathLike) -> Path:
    return Path(path).expanduser().resolve()


def _relation(dest: Path, src: Path, inside: bool) -> str | None:
    if dest == src:
        return "is"
    if dest in src.parents:
        return "contains"
    if inside and src in dest.parents:
        return "lies inside"
    return None


def destination_problem(dest: str | os.PathLike, sources: Iterable[Source]) -> str | None:
    """ "DEST is|contains|lies inside the LABEL SRC" for the first source `dest` would touch, else None."""
    d = resolved(dest)
    for label, path, kind in sources:
        if path is None or str(path) == "":
            continue
        s = resolved(path)
        if kind == "run":
            targets = [
                (label, path, s, False),
                ("checkpoints folder", Path(path) / CHECKPOINTS, s / CHECKPOINTS, True),
            ]
        else:
            targets = [(label, path, s, kind == "folder")]
        for what, shown, target, inside in targets:
            rel = _relation(d, target, inside)
            if rel:
                return f"{dest} {rel} the {what} {shown}"
    return None


def check_destination(dest: str | os.PathLike, sources: Iterable[Source], *, name: str = "--out") -> None:
    """Raise DestinationError when writing `dest` would touch one of `sources` (see module doc)."""
    problem = destination_problem(dest, sources)
    if problem:
        raise DestinationError(
            f"{name} {problem}, which this command reads; refusing to write there. Choose another {name}"
        )


def is_densa_output(folder: str | os.PathLike) -> bool:
    return (Path(folder) / MARKER).is_file()


def write_marker(folder: str | os.PathLike, kind: str = "folder") -> None:
    from densa import __version__

    meta = {
        "written_by": "densa",
        "densa_version": __version__,
        "kind": kind,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    (Path(folder) / MARKER).write_text(json.dumps(meta) + "\n", encoding="utf-8")


def replace_problem(path: str | os.PathLike, overwrite: bool, *, name: str = "--out") -> str | None:
    """Why writing the folder `path` must not go ahead (None when it may): it exists, is not empty and
    `overwrite` is off, or it exists and densa did not write it (no marker), whatever `overwrite` says."""
    p = Path(path)
    if not os.path.lexists(p):
        return None
    if p.is_dir() and not any(p.iterdir()):
        return None
    if p.is_dir() and is_densa_output(p):
        if overwrite:
            return None
        # A CLI flag or argument name ("--out", "DST") gets the flag; a Python caller the keyword too.
        how = (
            "--overwrite" if name.startswith("--") or name.isupper() else "overwrite=True (CLI: --overwrite)"
        )
        return f"{p} already exists and is not empty (pass {how} to replace it)"
    return (
        f"{p} exists and was not written by densa (no {MARKER} marker; folders from densa 0.1.0 and earlier"
        f" have none); refusing to replace it. Choose another {name} or remove it yourself"
    )


def check_replaceable(path: str | os.PathLike, overwrite: bool, *, name: str = "--out") -> None:
    """Raise DestinationError unless the folder `path` may be (re)written; see `replace_problem`."""
    problem = replace_problem(path, overwrite, name=name)
    if problem:
        raise DestinationError(problem)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 `text` to a temporary sibling, fsync it, rename it over `path`: a failed write leaves
    the previous file intact and no temporary file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
