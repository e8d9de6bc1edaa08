"""Export a densa state dict as a self-contained HF folder: safetensors, config, generation config,
tokenizer, model card (README.md), sparsity.json when given, and modeling code for variants HF lacks.

The folder is assembled in a temporary sibling and renamed into place (nothing half-written under `out`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from densa.errors import CheckpointError
from densa.inference.model_card import CardInputs, build_model_card
from densa.models.checkpoint_io import atomic_dir
from densa.models.config import ModelConfig
from densa.models.hf import hf_flavour, save_hf
from densa.models.hf.convert import TOKENIZER_FILES

HF_TOKENIZER_FILES = TOKENIZER_FILES
DEFAULT_LICENSE = "apache-2.0"
DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16}  # fmt: skip


def parse_dtype(name: str | None) -> torch.dtype | None:
    if name is None:
        return None
    try:
        return DTYPES[name.lower()]
    except KeyError:
        raise CheckpointError(f"unknown --dtype {name!r}; choose from {sorted(set(DTYPES))}") from None


def write_tokenizer(tokenizer: Path, out: Path) -> None:
    """Copy an HF tokenizer folder's files (chat template included) into `out`, or convert a SentencePiece
    `.model` file to HF files there; shared by `densa export` and `densa moefy`."""
    if tokenizer.is_file() and tokenizer.suffix == ".model":
        from densa.data.hf_export import export_sentencepiece_to_hf

        export_sentencepiece_to_hf(tokenizer, out)
    elif tokenizer.is_dir():
        found = [n for n in HF_TOKENIZER_FILES if (tokenizer / n).is_file()]
        if not found:
            raise CheckpointError(
                f"{tokenizer}: missing tokenizer files (looked for {', '.join(HF_TOKENIZER_FILES)})"
            )
        for name in found:
            shutil.copy2(tokenizer / name, out / name)
    else:
        raise CheckpointError(
            f"{tokenizer}: tokenizer not found (a SentencePiece .model file or an HF folder)"
        )


def _token_ids(tokenizer: Path) -> dict[str, int]:
    from densa.data.tokenizer import load_tokenizer

    tok = load_tokenizer(tokenizer)
    ids = {"bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id, "pad_token_id": tok.pad_id}
    return {k: int(v) for k, v in ids.items() if v is not None}


def _provenance(config: ModelConfig, license: str | None) -> dict[str, Any]:
    """CardInputs' license / base_model / datasets fields from the source recorded in `config.extra`."""
    source = config.extra.get("hf_source")
    if not isinstance(source, dict):  # trained from scratch (or from a folder that recorded nothing)
        return {"license": license or DEFAULT_LICENSE}
    out: dict[str, Any] = {
        "license": license or source.get("license"),
        "base_model": source.get("repo_id"),
        "datasets": list(source.get("datasets") or []),
    }
    if license is None:
        out.update(license_name=source.get("license_name"), license_link=source.get("license_link"))
    return out


def _check_predictors(path: Path, config: ModelConfig) -> dict[str, Any]:
    """The predictors file's metadata, after checking it was trained for this architecture."""
    from densa.sparsity.errors import SparsityError
    from densa.sparsity.predictor_io import read_predictors_metadata

    try:
        meta = read_predictors_metadata(path)
    except SparsityError as err:
        raise CheckpointError(str(err)) from None
    have = (int(meta["n_layers"]), int(meta["dim"]), int(meta["ffn_dim"]))  # type: ignore[arg-type]
    want = (config.n_layers, config.dim, config.ffn_dim)
    if have != want:
        raise CheckpointError(
            f"{path}: predictors for n_layers, dim, ffn_dim = {have}; this model has {want}"
        )
    return meta


def export_model(
    out: str | os.PathLike,
    config: ModelConfig,
    state: dict[str, torch.Tensor],
    *,
    tokenizer: str | os.PathLike | None = None,
    dtype: torch.dtype | None = None,
    name: str | None = None,
    license: str | None = None,
    recipe_text: str | None = None,
    data: list[dict[str, Any]] | None = None,
    metrics: dict[str, Any] | None = None,
    sparsity_report: str | os.PathLike | None = None,
    predictors: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the HF folder `out`. Token ids in config.json come from the tokenizer (else what the config
    records); generation_config.json is the source model's (`extra["hf_generation_config"]`) with missing
    ids filled from config.json's. The model card's `base_model`, `datasets` and `license` come from
    `extra["hf_source"]` (the model finetuned from); `license` given overrides, and a model with no source
    gets apache-2.0.

    sparsity_report / predictors: copied as sparsity.json / predictors.safetensors, which
    `InferenceEngine.from_pretrained` picks up for `ffn="sparse"`.
    """
    tok_path = Path(tokenizer) if tokenizer is not None else None
    if tok_path is not None:
        if not tok_path.exists():
            raise CheckpointError(
                f"{tok_path}: tokenizer not found (a SentencePiece .model file or an HF folder)"
            )
        config = dataclasses.replace(config, extra={**config.extra, **_token_ids(tok_path)})
    sparsity = None
    if sparsity_report is not None:
        report_path = Path(sparsity_report)
        if not report_path.is_file():
            raise CheckpointError(f"{report_path}: sparsity report not found")
        sparsity = json.loads(report_path.read_text(encoding="utf-8"))
    predictor_meta = None
    if predictors is not None:
        predictor_meta = _check_predictors(Path(predictors), config)
    with atomic_dir(out, overwrite) as tmp:
        save_hf(tmp, config, state, dtype=dtype, overwrite=True)
        if tok_path is not None:
            write_tokenizer(tok_path, tmp)
        if sparsity is not None:
            (tmp / "sparsity.json").write_text(json.dumps(sparsity, indent=2) + "\n", encoding="utf-8")
        if predictors is not None:
            shutil.copyfile(predictors, tmp / "predictors.safetensors")
        card = CardInputs(
            name=name or Path(out).name,
            config=config,
            **_provenance(config, license),
            recipe_text=recipe_text,
            data=data or [],
            metrics=metrics or {},
            sparsity=sparsity,
            predictors=predictor_meta,
            remote_code=hf_flavour(config) == "densa",
        )
        (tmp / "README.md").write_text(build_model_card(card), encoding="utf-8")
    return Path(out)
