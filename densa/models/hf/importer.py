"""HF folder (Llama, Mistral, Qwen2, densa remote code) -> densa config, state dict and model."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch

from densa.errors import CheckpointError
from densa.models.checkpoint_io import build_transformer
from densa.models.config import ModelConfig
from densa.models.hf.config_map import config_from_hf
from densa.models.hf.files import load_weights, read_json
from densa.models.hf.mapping import hf_to_densa
from densa.models.hf.source import source_info
from densa.models.transformer import Transformer


def is_hf_folder(path: str | os.PathLike) -> bool:
    """A folder with an HF config.json (a `model_type` key)."""
    config = Path(path) / "config.json"
    if not config.is_file():
        return False
    try:
        return "model_type" in read_json(config)
    except CheckpointError:
        return False


def load_hf_config(path: str | os.PathLike, *, max_seq_len: int | None = None) -> ModelConfig:
    """The folder's ModelConfig; `extra` records its generation_config.json and where it comes from
    (`hf_source`: Hub id, license, datasets; see densa.models.hf.source)."""
    folder = Path(path)
    if not folder.is_dir():
        raise CheckpointError(
            f"{folder}: no such folder (expected an HF model folder with config.json;"
            f" a model on the Hub: hf download ORG/NAME --local-dir {folder})"
        )
    hf = read_json(folder / "config.json")
    config = config_from_hf(hf, max_seq_len=max_seq_len)
    extra = {**config.extra, "hf_source": source_info(folder, hf)}
    generation = folder / "generation_config.json"
    if generation.is_file():
        gen = {k: v for k, v in read_json(generation).items() if k != "transformers_version"}
        extra["hf_generation_config"] = gen
    return dataclasses.replace(config, extra=extra)


def load_hf_state(
    path: str | os.PathLike, *, max_seq_len: int | None = None
) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """(ModelConfig, densa state dict) of an HF folder; tensors keep the dtype they were stored in."""
    folder = Path(path)
    config = load_hf_config(folder, max_seq_len=max_seq_len)
    hf = read_json(folder / "config.json")
    # Llama's attention_bias also biases o_proj; densa has no such bias, so it must be zero.
    o_proj_bias = bool(hf.get("attention_bias")) and hf["model_type"] != "qwen2"
    try:
        state = hf_to_densa(load_weights(folder), config, o_proj_bias=o_proj_bias)
    except CheckpointError as err:
        raise CheckpointError(f"{folder}: {err}") from None
    return config, state


def load_hf_model(
    path: str | os.PathLike,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    max_seq_len: int | None = None,
) -> Transformer:
    """A densa Transformer (eval mode) with the weights of an HF folder."""
    config, state = load_hf_state(path, max_seq_len=max_seq_len)
    return build_transformer(config, state, dtype=dtype, device=device)
