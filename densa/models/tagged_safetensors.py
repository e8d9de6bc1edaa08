"""Side files next to a model (retaining heads, neuron predictors): one safetensors file whose header metadata
names its format and describes what the tensors were trained for, written atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from densa.outputs import DestinationError


def check_tagged_destination(path: str | os.PathLike, fmt: str, what: str, *, name: str = "--out") -> None:
    """Refuse (DestinationError) to write a `fmt` file over anything but an earlier `fmt` file: a
    folder, a model's weights or any other file stays as it is."""
    path = Path(path)
    if not os.path.lexists(path):
        return
    if path.is_file():
        try:
            read_tagged_metadata(path, fmt, what)
            return
        except ValueError:
            pass
    raise DestinationError(
        f"{name} {path} exists and is not a {what} file densa wrote; refusing to replace it."
        f" Choose another {name} or remove it yourself"
    )


def write_tagged(path: str | os.PathLike, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Write `tensors` with JSON-encoded `meta` in the header: to a temp file, then renamed into place.
    An existing `path` is replaced only when it is a file of the same format (`check_tagged_destination`)."""
    path = Path(path)
    check_tagged_destination(path, meta["format"], str(meta["format"]), name="output file")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file(tensors, tmp, metadata={k: json.dumps(v) for k, v in meta.items()})
    tmp.replace(path)
    return path


def read_tagged_metadata(
    path: str | os.PathLike, fmt: str, what: str, error: type[Exception] = ValueError
) -> dict[str, Any]:
    """The header metadata of a `write_tagged` file of format `fmt`; `error(message)` names the file when
    it is missing (`what` says what was expected), not safetensors, or of another format."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: no such {what} file")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
        meta = {k: json.loads(v) for k, v in raw.items()}
    except Exception as err:  # safetensors raises several types for a corrupt header
        raise error(f"{path}: not a safetensors file ({err})") from None
    if meta.get("format") != fmt:
        raise error(f"{path}: format is {meta.get('format')!r}, expected {fmt!r}")
    return meta
