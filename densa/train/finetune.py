"""Finetuning helpers: start from existing weights, freeze by glob, export to an HF folder at the end.

`load_weights(path)` accepts the three kinds of model a user has lying around:
- an HF folder (config.json with `model_type`) — through `densa.models.hf`;
- a densa model folder (`densa convert` / `export` output) — through `densa.models.checkpoint_io`;
- a densa training checkpoint (`RUN/checkpoints/step_N`, or a run dir: its newest checkpoint).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os
import shutil
from pathlib import Path

import torch
from torch import nn

from densa.errors import CheckpointError, DensaError
from densa.models.config import ModelConfig


def load_weights(path: str | os.PathLike) -> tuple[ModelConfig | None, dict[str, torch.Tensor]]:
    """(model config if recorded, tp = 1 densa state dict) of an HF/densa folder or a checkpoint."""
    from densa.models.checkpoint_io import is_densa_checkpoint, load_model_state
    from densa.models.hf.importer import is_hf_folder, load_hf_state
    from densa.train.checkpoint import RECIPE_FILE, checkpoint_weights, is_complete, latest_checkpoint

    folder = Path(path)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: no such folder (expected an HF folder, densa model or checkpoint)")
    if is_hf_folder(folder):
        return load_hf_state(folder)
    if is_densa_checkpoint(folder):
        return load_model_state(folder)
    if not is_complete(folder) and latest_checkpoint(folder) is not None:
        folder = latest_checkpoint(folder)
    if is_complete(folder):
        from densa.config.load import load_recipe
        from densa.train.methods import trained_model_config

        cfg = load_recipe(folder / RECIPE_FILE, check=False)
        # The architecture trained, not the one loaded: ProSparse swaps the activation to ReLU.
        return trained_model_config(cfg), checkpoint_weights(folder)
    raise CheckpointError(
        f"{folder}: not an HF folder (config.json with model_type), a densa model folder or a complete"
        " densa training checkpoint (step_N with a COMPLETE marker)"
    )


def _shape_fields(config: ModelConfig) -> dict:
    # Not a shape: a FATReLU checkpoint may seed a ReLU run (ProSparse applies its own T).
    skip = {"extra", "max_seq_len", "init_std", "activation_threshold"}
    return {k: v for k, v in dataclasses.asdict(config).items() if k not in skip}


def init_from(model: nn.Module, path: str | os.PathLike, tp_rank: int = 0) -> None:
    """Load `path`'s weights into `model` (sharded for TP); its architecture must match the recipe's."""
    config, state = load_weights(path)
    ours = model.config
    if config is not None:
        a, b = _shape_fields(config), _shape_fields(ours)
        diff = {k: (a[k], b[k]) for k in a if a[k] != b[k]}
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


def export_hf_folder(
    hf_dir: str | os.PathLike, config: ModelConfig, state: dict[str, torch.Tensor], tokenizer: str | None
) -> Path:
    """Write an HF folder (weights, config, generation config) plus the run's tokenizer files."""
    from densa.models.hf.exporter import save_hf

    out = save_hf(hf_dir, config, state, overwrite=True)
    if tokenizer:
        tok = Path(tokenizer)
        if tok.is_file() and tok.suffix == ".model":
            from densa.data.hf_export import export_sentencepiece_to_hf

            export_sentencepiece_to_hf(tok, out)
        elif tok.is_dir():
            from densa.models.hf.convert import TOKENIZER_FILES

            for name in TOKENIZER_FILES:
                if (tok / name).is_file():
                    shutil.copy2(tok / name, out / name)
    return out


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
