"""densa model folders: `model.safetensors` + `config.json` ({format marker, ModelConfig}).

This is the weights-only exchange format (what `densa convert` writes and the trainer can start from);
training checkpoints with optimizer state live in `densa.train`. Folders are written to a temporary
sibling and renamed into place, so a crash never leaves a half-written folder under the final name.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from densa.errors import CheckpointError, CorruptFileError
from densa.models.config import ModelConfig
from densa.models.rope import RotaryEmbedding
from densa.models.transformer import Transformer
from densa.outputs import check_replaceable, write_marker

FORMAT = "densa-model"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = False, *, kind: str = "folder") -> Iterator[Path]:
    """Yield a temporary folder next to `path`; on success it replaces `path` in one rename.

    The folder gets a `densa.outputs.MARKER` file (`kind` says what it holds). An existing non-empty
    `path` is replaced only with `overwrite` and only when it carries that marker (densa wrote it);
    otherwise DestinationError is raised before anything is written."""
    final = Path(path)
    check_replaceable(final, overwrite, name="output folder")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
        write_marker(tmp, kind)
        if os.path.lexists(final):
            check_replaceable(final, overwrite, name="output folder")  # it may have appeared meanwhile
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            final.rename(old)
            try:
                tmp.rename(final)
            except BaseException:
                old.rename(final)
                raise
            # A symlink is replaced, never followed: what it pointed to stays as it was.
            shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink()
        else:
            tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def copy_files(files: Iterable[str | os.PathLike], folder: Path) -> None:
    for file in files:
        shutil.copy2(file, folder / Path(file).name)


def is_densa_checkpoint(path: str | os.PathLike) -> bool:
    config = Path(path) / CONFIG_FILE
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text(encoding="utf-8")).get("format") == FORMAT
    except (json.JSONDecodeError, AttributeError):
        return False


def save_model(
    path: str | os.PathLike,
    config: ModelConfig,
    state_dict: dict[str, torch.Tensor],
    *,
    dtype: torch.dtype | None = None,
    overwrite: bool = False,
    extra_files: Iterable[str | os.PathLike] = (),
) -> Path:
    """Write a densa model folder; `dtype` casts floats; `extra_files` (e.g. tokenizer) are copied in."""
    tensors = {}
    for key, tensor in state_dict.items():
        tensor = tensor.detach()
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        tensors[key] = tensor.contiguous().cpu()
    with atomic_dir(path, overwrite, kind=FORMAT) as tmp:
        save_file(tensors, tmp / WEIGHTS_FILE, metadata={"format": "pt"})
        meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "model_config": config.to_dict()}
        (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        copy_files(extra_files, tmp)
    return Path(path)


def save_transformer(path: str | os.PathLike, model: Transformer, **kwargs) -> Path:
    return save_model(path, model.config, model.state_dict(), **kwargs)


def load_model_config(path: str | os.PathLike) -> ModelConfig:
    """The ModelConfig of a densa model folder (its config.json only; the weights are not read)."""
    folder = Path(path)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: no such folder")
    if not is_densa_checkpoint(folder):
        raise CheckpointError(f"{folder}: no {CONFIG_FILE} with format {FORMAT!r} (not a densa model folder)")
    meta = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{folder}: format_version {meta['format_version']} is newer than this densa")
    try:
        return ModelConfig.from_dict(meta["model_config"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{folder / CONFIG_FILE}: bad model_config ({err})") from None


def load_model_state(path: str | os.PathLike) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """(config, state dict) of a densa model folder."""
    folder = Path(path)
    config = load_model_config(folder)
    if not (folder / WEIGHTS_FILE).is_file():
        raise CheckpointError(f"{folder}: no {WEIGHTS_FILE}")
    return config, read_safetensors(folder / WEIGHTS_FILE)


def read_safetensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """`safetensors.torch.load_file`, with a truncated or garbage file reported as a CorruptFileError."""
    try:
        return load_file(path)
    except (SafetensorError, OSError) as err:
        raise CorruptFileError(
            f"{path}: not a readable safetensors file, truncated or damaged ({err})"
        ) from None


def check_state_fits(config: ModelConfig, state: dict[str, torch.Tensor], where: str) -> None:
    """CheckpointError naming the first tensor whose name or shape the model built from `config` does not
    have, and any tensor it needs that `state` lacks (`where` starts the message: the folder or file).
    Cheap: the model is built on the meta device."""
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in Transformer(config).state_dict().items()}
    for key, tensor in state.items():
        if key not in expected:
            raise CheckpointError(f"{where}: tensor {key} has no place in the model the config describes")
        if tuple(tensor.shape) != expected[key]:
            raise CheckpointError(
                f"{where}: tensor {key} has shape {list(tensor.shape)}, the model config expects "
                f"{list(expected[key])}"
            )
    missing = sorted(set(expected) - set(state))
    if missing:
        raise CheckpointError(
            f"{where}: {len(missing)} tensor(s) the config needs are missing, e.g. {missing[:3]}"
        )


def load_transformer(
    path: str | os.PathLike, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> Transformer:
    config, state = load_model_state(path)
    return build_transformer(config, state, dtype=dtype, device=device, where=str(path))


def build_transformer(
    config: ModelConfig,
    state: dict[str, torch.Tensor],
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    where: str = "state dict",
) -> Transformer:
    """A Transformer built around `state`'s tensors (no copy unless `dtype`/`device` differ).

    Key or shape mismatches raise CheckpointError, its message starting with `where` (e.g. the folder)."""
    check_state_fits(config, state, where)
    model = _build_without_init(config)
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as err:
        raise CheckpointError(f"state dict does not fit the model: {err}") from None
    return model.to(device=device, dtype=dtype).eval()


def _build_without_init(config: ModelConfig) -> Transformer:
    """Build on the meta device (random init of a large model costs seconds to minutes, all overwritten),
    then recreate the RoPE tables, the only non-persistent buffers. Falls back to a normal build if the
    model ever grows other buffers that loading would not fill."""
    with torch.device("meta"):
        model = Transformer(config)
    model.rope = RotaryEmbedding(config.head_dim, config.rope_theta, config.rope_scaling, config.max_seq_len)
    persistent = {name for name, _ in model.named_parameters()} | set(model.state_dict())
    if any(name not in persistent for name, t in model.named_buffers() if t.is_meta):
        return Transformer(config)
    return model
