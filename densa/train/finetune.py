"""Finetuning helpers: start from existing weights (or only read their config), freeze by glob.

`load_weights(path)` accepts the three kinds of model a user has lying around:
- an HF folder (config.json with `model_type`) — through `densa.models.hf`;
- a densa model folder (`densa convert` / `export` output) — through `densa.models.checkpoint_io`;
- a densa training checkpoint (`RUN/checkpoints/step_N`, or a run dir: its newest checkpoint).
"""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path

import torch
from torch import nn

from densa.errors import CheckpointError, DensaError
from densa.models.config import ModelConfig, shape_differences


def _kind(folder: Path) -> tuple[str, Path]:
    """("hf" | "densa" | "checkpoint", folder to read) of an init/export source; a run dir resolves to its
    newest complete checkpoint."""
    from densa.models.checkpoint_io import is_densa_checkpoint
    from densa.models.hf.importer import is_hf_folder
    from densa.train.checkpoint import is_complete, latest_checkpoint

    if not folder.is_dir():
        raise CheckpointError(
            f"{folder}: no such folder (expected an HF folder, densa model or checkpoint;"
            f" a model on the Hub: hf download ORG/NAME --local-dir {folder})"
        )
    if is_hf_folder(folder):
        return "hf", folder
    if is_densa_checkpoint(folder):
        return "densa", folder
    if not is_complete(folder) and latest_checkpoint(folder) is not None:
        folder = latest_checkpoint(folder)
    if is_complete(folder):
        return "checkpoint", folder
    raise CheckpointError(
        f"{folder}: not an HF folder (config.json with model_type), a densa model folder or a complete"
        " densa training checkpoint (step_N with a COMPLETE marker)"
    )


def _checkpoint_recipe(folder: Path):
    from densa.config.load import load_recipe
    from densa.train.checkpoint import RECIPE_FILE

    return load_recipe(folder / RECIPE_FILE, check=False)


def _checkpoint_config(folder: Path) -> ModelConfig:
    from densa.train.methods import trained_model_config

    # The architecture trained, not the one loaded: ProSparse swaps the activation to ReLU.
    return trained_model_config(_checkpoint_recipe(folder))


def read_model_config(path: str | os.PathLike, *, max_seq_len: int | None = None) -> ModelConfig:
    """The model config of an HF folder, densa model folder or training checkpoint (or run dir), without
    reading its weights. `max_seq_len` replaces an HF folder's `max_position_embeddings` as the context."""
    from densa.models.checkpoint_io import load_model_config
    from densa.models.hf.importer import load_hf_config

    kind, folder = _kind(Path(path))
    if kind == "hf":
        return load_hf_config(folder, max_seq_len=max_seq_len)
    if kind == "densa":
        return load_model_config(folder)
    return _checkpoint_config(folder)


def load_weights(
    path: str | os.PathLike, *, merge_lora: bool = True
) -> tuple[ModelConfig | None, dict[str, torch.Tensor]]:
    """(model config if recorded, tp = 1 densa state dict) of an HF/densa folder or a checkpoint.

    A LoRA run's checkpoint comes back merged (W + alpha / rank · B·A under plain names) unless
    `merge_lora` is False: then with its adapters (`densa.lora.adapters` names), for an adapter export."""
    from densa.lora.adapters import merge_lora_state
    from densa.models.checkpoint_io import load_model_state
    from densa.models.hf.importer import load_hf_state
    from densa.train.checkpoint import checkpoint_weights
    from densa.train.methods import trained_model_config

    kind, folder = _kind(Path(path))
    if kind == "hf":
        return load_hf_state(folder)
    if kind == "densa":
        return load_model_state(folder)
    recipe, state = _checkpoint_recipe(folder), checkpoint_weights(folder)
    return trained_model_config(recipe), merge_lora_state(state, recipe.lora) if merge_lora else state


def init_from(model: nn.Module, path: str | os.PathLike, tp_rank: int = 0) -> None:
    """Load `path`'s weights into `model` (sharded for TP); its architecture must match the recipe's
    (floats to a relative 1e-6: `norm_eps` 1e-5 and float32's 9.999999747e-06 are the same)."""
    config, state = load_weights(path)
    ours = model.config
    if config is not None:
        diff = shape_differences(config, ours)
        if diff:
            desc = ", ".join(f"{k}: {x!r} there, {y!r} in the recipe" for k, (x, y) in diff.items())
            raise CheckpointError(f"init.from_path {path}: model differs from the recipe's ({desc})")
    from densa.models.checkpoint_io import check_state_fits

    check_state_fits(ours, state, f"init.from_path {path}")
    if model.tp_size > 1:
        from densa.models.parallel import shard_state_dict

        state = shard_state_dict(state, ours, tp_rank, model.tp_size)
    try:
        model.load_state_dict({k: v.to(torch.float32) for k, v in state.items()}, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"init.from_path {path}: weights do not fit the model: {err}") from None


def freeze(model: nn.Module, patterns: tuple[str, ...] | list[str]) -> list[str]:
    """Set requires_grad=False on parameters whose name matches any glob; returns the frozen names."""
    if not patterns:
        return []
    names = [n for n, _ in model.named_parameters()]
    unmatched = [p for p in patterns if not any(fnmatch.fnmatchcase(n, p) for n in names)]
    if unmatched:
        raise DensaError(f"init.freeze: {unmatched} match no parameter (names look like {names[:3]})")
    frozen = []
    for name, param in model.named_parameters():
        if any(fnmatch.fnmatchcase(name, p) for p in patterns):
            param.requires_grad_(False)
            frozen.append(name)
    if len(frozen) == len(names):
        raise DensaError("init.freeze: every parameter is frozen; nothing would train")
    return frozen


def load_model(path: str | os.PathLike, config: ModelConfig | None = None):
    """A tp = 1 Transformer (fp32, eval mode) from an HF folder, densa model folder or training checkpoint."""
    from densa.models.checkpoint_io import build_transformer

    found, state = load_weights(path)
    config = found or config
    if config is None:
        raise CheckpointError(f"{path}: records no model config")
    return build_transformer(config, {k: v.float() for k, v in state.items()}, where=str(path))


def find_tokenizer(path: str | os.PathLike) -> str | None:
    """The tokenizer belonging to a model: files in its folder, else the training recipe's data.tokenizer."""
    from densa.train.checkpoint import RECIPE_FILE, is_complete, latest_checkpoint

    folder = Path(path)
    if any(
        (folder / name).is_file() for name in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")
    ):
        return str(folder)
    if not is_complete(folder) and latest_checkpoint(folder) is not None:
        folder = latest_checkpoint(folder)
    if (folder / RECIPE_FILE).is_file():
        from densa.config.load import load_recipe

        return load_recipe(folder / RECIPE_FILE, check=False).data.tokenizer
    return None
