"""Save and load retaining heads apart from the backbone: one safetensors file whose header metadata
holds the model fingerprint (config hash), hidden size and activation."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from densa.models.transformer import Transformer
from densa.retaining_heads.errors import RetainingHeadsError
from densa.retaining_heads.heads import RetainingHeads, attach_heads, check_fingerprint, get_heads

FORMAT = "densa-retaining-heads"
FORMAT_VERSION = 1


def heads_state_dict(model: Transformer) -> dict[str, torch.Tensor]:
    """The heads' parameters only (keys relative to the heads module, e.g. `layers.0.fc1.weight`)."""
    return {k: v.detach() for k, v in get_heads(model).state_dict().items()}


def heads_metadata(model: Transformer) -> dict[str, object]:
    return {"format": FORMAT, "format_version": FORMAT_VERSION, **get_heads(model).metadata()}


def save_heads(path: str | os.PathLike, model: Transformer) -> Path:
    """Write the attached heads to `path` (a .safetensors file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.contiguous().cpu() for k, v in heads_state_dict(model).items()}
    meta = {k: json.dumps(v) for k, v in heads_metadata(model).items()}
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file(tensors, tmp, metadata=meta)
    tmp.replace(path)
    return path


def read_heads_metadata(path: str | os.PathLike) -> dict[str, object]:
    path = Path(path)
    if not path.is_file():
        raise RetainingHeadsError(f"{path}: no such retaining-heads file")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
        meta = {k: json.loads(v) for k, v in raw.items()}
    except Exception as err:  # safetensors raises several types for a corrupt header
        raise RetainingHeadsError(f"{path}: not a safetensors file ({err})") from None
    if meta.get("format") != FORMAT:
        raise RetainingHeadsError(f"{path}: format is {meta.get('format')!r}, expected {FORMAT!r}")
    return meta


def load_heads(model: Transformer, path: str | os.PathLike) -> RetainingHeads:
    """Build heads from `path`, check they were trained for this model, attach them; returns them."""
    meta = read_heads_metadata(path)
    check_fingerprint(str(meta["fingerprint"]), model.config, what=f"retaining heads in {Path(path).name}")
    heads = RetainingHeads(model.config, int(meta["hidden"]), str(meta["activation"]))
    try:
        heads.load_state_dict(load_file(str(path)), strict=True)
    except RuntimeError as err:
        raise RetainingHeadsError(f"{path}: weights do not fit the heads: {err}") from None
    ref = next(model.parameters())
    return attach_heads(model, heads.to(device=ref.device, dtype=ref.dtype))
