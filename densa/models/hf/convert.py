"""Convert between HF folders and densa model folders (what `densa convert` runs).

The source format is detected from its config.json; the target defaults to the other format.
Tokenizer files travel along, so a converted folder stays usable for generation.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from densa.errors import CheckpointError
from densa.models.checkpoint_io import (
    check_state_fits,
    is_densa_checkpoint,
    load_model_state,
    save_model,
)
from densa.models.hf.exporter import save_hf
from densa.models.hf.importer import is_hf_folder, load_hf_state

FORMATS = ("hf", "densa")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",  # transformers >= 4.47 keeps the chat template beside the tokenizer config
    "chat_template.json",
)


def detect_format(path: str | os.PathLike) -> str:
    """'densa' or 'hf' from a folder's config.json; CheckpointError when it is neither."""
    folder = Path(path)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: no such folder")
    if is_densa_checkpoint(folder):
        return "densa"
    if is_hf_folder(folder):
        return "hf"
    raise CheckpointError(
        f"{folder}: not a model folder (looked for config.json with "
        f"'format': 'densa-model' or an HF 'model_type')"
    )


def convert(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    to: str | None = None,
    dtype: str | None = None,
    max_seq_len: int | None = None,
    max_shard_size: str = "5GB",
    overwrite: bool = False,
) -> tuple[str, str]:
    """Convert SRC into DST; returns (source format, target format)."""
    source = detect_format(src)
    target = to or ("hf" if source == "densa" else "densa")
    if target not in FORMATS:
        raise CheckpointError(f"unknown target format {target!r}; choose from {FORMATS}")
    if dtype is not None and dtype not in DTYPES:
        raise CheckpointError(f"unknown dtype {dtype!r}; choose from {sorted(DTYPES)}")
    if source == "hf":
        config, state = load_hf_state(src, max_seq_len=max_seq_len)
    else:
        config, state = load_model_state(src)
    # Refuse before writing: a folder whose config.json disagrees with its weights would convert "fine"
    # into a folder nothing can load.
    check_state_fits(config, state, str(src))
    torch_dtype = DTYPES[dtype] if dtype else None
    tokenizer = [Path(src) / name for name in TOKENIZER_FILES if (Path(src) / name).is_file()]
    if target == "hf":
        save_hf(
            dst,
            config,
            state,
            dtype=torch_dtype,
            max_shard_size=max_shard_size,
            overwrite=overwrite,
            extra_files=tokenizer,
        )
    else:
        save_model(dst, config, state, dtype=torch_dtype, overwrite=overwrite, extra_files=tokenizer)
    return source, target
