"""Load a model and its tokenizer for inference from an HF folder, a densa model folder or an MoE folder.

Training run dirs (`RUN/checkpoints/step_N`, DeepSpeed files) are not read here: densa.inference does not
depend on densa.train. `densa export RUN --out DIR` turns them into an HF folder this module loads.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from densa.errors import CheckpointError
from densa.models.transformer import Transformer

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
HF_WEIGHTS = (
    "model.safetensors.index.json",
    "model.safetensors",
    "pytorch_model.bin.index.json",
    "pytorch_model.bin",
)


@dataclass
class LoadedModel:
    model: Transformer
    tokenizer: Any | None
    """A `densa.data.tokenizer` Tokenizer, or None when the folder has none and none was given."""
    kind: str
    """`hf`, `densa` or `moe`."""
    path: Path


def _config_json(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{folder}: missing config.json (expected an HF or densa model folder)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: not valid JSON ({err})") from None


def checkpoint_kind(path: str | os.PathLike) -> str:
    """`hf`, `densa` or `moe`; a clear CheckpointError naming the path and the missing file otherwise."""
    folder = Path(path)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: no such folder")
    if (folder / "checkpoints").is_dir() or (folder / "COMPLETE").is_file():
        raise CheckpointError(
            f"{folder}: a training run dir / checkpoint; export it first (`densa export {folder} --out DIR`)"
        )
    meta = _config_json(folder)
    if meta.get("format") == "densa-model":
        if not (folder / "model.safetensors").is_file():
            raise CheckpointError(f"{folder}: missing model.safetensors (densa model folder)")
        if (folder / "moe.json").is_file():
            if not (folder / "moe_router.safetensors").is_file():
                raise CheckpointError(f"{folder}: missing moe_router.safetensors (MoE folder with moe.json)")
            return "moe"
        return "densa"
    if "model_type" in meta:
        if not any((folder / name).is_file() for name in HF_WEIGHTS):
            raise CheckpointError(f"{folder}: missing model.safetensors (looked for {', '.join(HF_WEIGHTS)})")
        return "hf"
    raise CheckpointError(
        f"{folder / 'config.json'}: neither an HF config (model_type) nor a densa model folder"
    )


def find_tokenizer(folder: str | os.PathLike) -> Path | None:
    """The folder itself when it holds tokenizer files (HF files preferred over a bare tokenizer.model)."""
    folder = Path(folder)
    if (folder / "tokenizer.json").is_file() or (folder / "tokenizer_config.json").is_file():
        return folder
    if (folder / "tokenizer.model").is_file():
        return folder / "tokenizer.model"
    return None


def load_for_inference(
    path: str | os.PathLike,
    *,
    tokenizer: str | os.PathLike | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    moe_top_k: int | None = None,
) -> LoadedModel:
    """Model (eval mode) and tokenizer of a folder; `moe_top_k` overrides an MoE folder's saved k."""
    folder = Path(path)
    kind = checkpoint_kind(folder)
    if moe_top_k is not None and kind != "moe":
        raise CheckpointError(f"{folder}: moe_top_k given but this is not an MoE folder (no moe.json)")
    if kind == "hf":
        from densa.models.hf.importer import load_hf_model

        model = load_hf_model(folder, dtype=dtype, device=device)
    elif kind == "densa":
        from densa.models.checkpoint_io import load_transformer

        model = load_transformer(folder, dtype=dtype, device=device)
    else:
        from densa.sparse_moe.inference import load_moe

        model = load_moe(folder, top_k=moe_top_k, dtype=dtype, device=str(device))
    tok_path = Path(tokenizer) if tokenizer is not None else find_tokenizer(folder)
    return LoadedModel(model=model, tokenizer=_load_tokenizer(tok_path), kind=kind, path=folder)


def _load_tokenizer(path: Path | None) -> Any | None:
    if path is None:
        return None
    if not path.exists():
        raise CheckpointError(f"{path}: tokenizer not found")
    from densa.data.tokenizer import HFTokenizer, load_tokenizer

    if path.is_dir() and any((path / n).is_file() for n in TOKENIZER_FILES[:2]):
        # A plain-FFN export's config.json names remote code; without an explicit False, transformers'
        # AutoTokenizer stops to ask whether to run it (a tokenizer never needs it).
        return HFTokenizer(path, trust_remote_code=False)
    return load_tokenizer(path)
