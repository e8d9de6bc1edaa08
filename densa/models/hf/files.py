"""Reading and writing weight files the way HF lays them out: single or sharded safetensors, or .bin."""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import torch
from safetensors.torch import save_file

from densa.errors import CheckpointError
from densa.models.checkpoint_io import read_safetensors

SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PT_BIN = "pytorch_model.bin"
PT_BIN_INDEX = "pytorch_model.bin.index.json"
WEIGHT_FILES = (SAFETENSORS_INDEX, SAFETENSORS, PT_BIN_INDEX, PT_BIN)


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path.parent}: no {path.name}") from None
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: not valid JSON ({err})") from None


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _load_one(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as err:  # weights-only refused a global: never retried unsafely
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        what = f" ({found.group(1)})" if found else ""
        raise CheckpointError(
            f"{path}: contains pickled objects that densa refuses to execute{what}; only tensors are"
            " loaded from .bin files. Do not use files from an untrusted source"
        ) from None
    except (RuntimeError, EOFError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable torch file, truncated or damaged ({err})") from None


def load_weights(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of an HF-style folder; sharded files are found through their index.json."""
    for name in WEIGHT_FILES:
        path = folder / name
        if not path.is_file():
            continue
        if not name.endswith(".index.json"):
            return _load_one(path)
        shards = sorted(set(read_json(path).get("weight_map", {}).values()))
        absent = [s for s in shards if not (folder / s).is_file()]
        if absent or not shards:
            raise CheckpointError(f"{path}: shard(s) missing from {folder}: {absent or 'empty weight_map'}")
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(_load_one(folder / shard))
        return state
    raise CheckpointError(f"{folder}: no weights found (looked for {', '.join(WEIGHT_FILES)})")


def parse_size(size: int | str) -> int:
    """'5GB', '200MB', '10KiB' or a byte count -> bytes."""
    if isinstance(size, int):
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?)B?\s*", size.upper().replace("IB", "iB"))
    if not match:
        raise CheckpointError(f"cannot parse size {size!r} (examples: 5GB, 500MB, 1048576)")
    number, unit, binary = match.groups()
    base = 1024 if binary else 1000
    return int(float(number) * base ** " KMGT".index(unit or " "))


def save_safetensors(state: dict[str, torch.Tensor], folder: Path, max_shard_bytes: int) -> list[str]:
    """Write `model.safetensors`, or shards plus `model.safetensors.index.json` when over the limit."""
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = tensor
        size += nbytes
    meta = {"format": "pt"}
    if len(shards) == 1:
        save_file(shards[0], folder / SAFETENSORS, metadata=meta)
        return [SAFETENSORS]
    names = [f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors" for k in range(len(shards))]
    weight_map = {}
    for name, shard in zip(names, shards, strict=True):
        save_file(shard, folder / name, metadata=meta)
        weight_map.update(dict.fromkeys(shard, name))
    total = sum(t.numel() * t.element_size() for t in state.values())
    write_json(folder / SAFETENSORS_INDEX, {"metadata": {"total_size": total}, "weight_map": weight_map})
    return [*names, SAFETENSORS_INDEX]
