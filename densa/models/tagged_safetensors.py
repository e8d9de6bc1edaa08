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


def write_tagged(path: str | os.PathLike, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Write `tensors` with JSON-encoded `meta` in the header: to a temp file, then renamed into place."""
    path = Path(path)
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
