"""Save and load retaining heads apart from the backbone: one safetensors file whose header metadata
holds the config fields the heads depend on (`fingerprint_fields`: weight shapes and what changes the
function), their hash, hidden size and activation."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import load_file

from densa.models.tagged_safetensors import read_tagged_metadata, write_tagged
from densa.models.transformer import Transformer
from densa.retaining_heads.errors import RetainingHeadsError
from densa.retaining_heads.heads import RetainingHeads, attach_heads, check_fits, get_heads

FORMAT = "densa-retaining-heads"
FORMAT_VERSION = 1


def heads_state_dict(model: Transformer) -> dict[str, torch.Tensor]:
    """The heads' parameters only (keys relative to the heads module, e.g. `layers.0.fc1.weight`)."""
    return {k: v.detach() for k, v in get_heads(model).state_dict().items()}


def heads_metadata(model: Transformer) -> dict[str, object]:
    return {"format": FORMAT, "format_version": FORMAT_VERSION, **get_heads(model).metadata()}


def save_heads(path: str | os.PathLike, model: Transformer) -> Path:
    """Write the attached heads to `path` (a .safetensors file)."""
    tensors = {k: v.contiguous().cpu() for k, v in heads_state_dict(model).items()}
    return write_tagged(path, tensors, heads_metadata(model))


def read_heads_metadata(path: str | os.PathLike) -> dict[str, object]:
    return read_tagged_metadata(path, FORMAT, "retaining-heads", RetainingHeadsError)


def load_heads(model: Transformer, path: str | os.PathLike) -> RetainingHeads:
    """Build heads from `path`, check they were trained for this model, attach them; returns them."""
    meta = read_heads_metadata(path)
    fields = meta.get("model")
    if fields is not None and not isinstance(fields, dict):
        raise RetainingHeadsError(f"{path}: metadata `model` is not a dict of config fields")
    what = f"retaining heads in {Path(path).name}"
    check_fits(fields, model.config, what=what, fingerprint=str(meta.get("fingerprint")))
    heads = RetainingHeads(model.config, int(meta["hidden"]), str(meta["activation"]))
    try:
        heads.load_state_dict(load_file(str(path)), strict=True)
    except RuntimeError as err:
        raise RetainingHeadsError(f"{path}: weights do not fit the heads: {err}") from None
    ref = next(model.parameters())
    return attach_heads(model, heads.to(device=ref.device, dtype=ref.dtype))
