"""One exporter for trained models: `densa export RUN` and the end-of-training `export.hf_dir` both call
`export_run`, so the two routes write the same folder (config.json, generation_config.json, tokenizer
files with the chat template, README.md model card) for the same weights.

Where each part comes from:

- weights and architecture: the caller (a checkpoint's weights and recipe, or the engine's full state
  dict and the run's config at the end of training);
- generation config, token ids, HF architecture, and the source's Hub id / license / datasets: the model
  config's `extra`, filled from the config of `init.from_path` (read, never its weights) for every key the
  run did not record; the tokenizer's BOS/EOS/PAD then go into config.json (`densa.inference.export`);
- tokenizer: `data.tokenizer` (or `densa export --tokenizer`), copied with its chat template;
- model card: the resolved recipe, its datasets' manifests, metrics.jsonl up to `step`, and a
  sparsity.json / predictors.safetensors in the checkpoint folder or the run dir.

A LoRA run's weights (adapters next to the frozen base) are exported as the recipe's `lora.export` (or
`lora_export`) says: merged into plain weights, or as a peft adapter folder (`densa.lora.export`).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import torch

from densa.errors import DensaError
from densa.models.config import ModelConfig

SPARSITY_FILE = "sparsity.json"
PREDICTORS_FILE = "predictors.safetensors"


def side_files(folder: Path | None, run: Path | None) -> tuple[Path | None, Path | None]:
    """(sparsity.json, predictors.safetensors) found in the checkpoint folder, else in the run dir."""

    def first(name: str) -> Path | None:
        return next((d / name for d in (folder, run) if d is not None and (d / name).is_file()), None)

    return first(SPARSITY_FILE), first(PREDICTORS_FILE)


def with_source_metadata(config: ModelConfig, init_path: str | os.PathLike | None) -> ModelConfig:
    """`config` with the `extra` metadata of the model it was finetuned from (generation config, token
    ids, HF architecture, `hf_source`) for every key it lacks; as it is when the source cannot be read."""
    if not init_path:
        return config
    from densa.train.finetune import read_model_config

    try:
        source = read_model_config(init_path)
    except (DensaError, OSError, ValueError):
        return config  # the source may be gone by now: export what the run recorded
    return dataclasses.replace(config, extra={**source.extra, **config.extra})


def recipe_lora(recipe: dict[str, Any]) -> Any:
    """The `LoRAConfig` of a resolved recipe (as parsed YAML); the default (off) when it has none."""
    from densa.lora.config import LoRAConfig

    fields = dict(recipe.get("lora") or {})
    if "target_modules" in fields:
        fields["target_modules"] = tuple(fields["target_modules"])
    return LoRAConfig(**fields)


def export_run(
    out: str | os.PathLike,
    config: ModelConfig,
    state: dict[str, torch.Tensor],
    *,
    run: Path | None,
    folder: Path | None = None,
    recipe_text: str | None = None,
    step: int | None = None,
    tokenizer: str | os.PathLike | None = None,
    dtype: torch.dtype | None = None,
    license: str | None = None,
    sparsity_report: str | os.PathLike | None = None,
    predictors: str | os.PathLike | None = None,
    overwrite: bool = False,
    lora_export: str | None = None,
) -> Path:
    """Write the HF folder `out` for a run's model (`folder`: the checkpoint read, for side files).

    `license` None takes the source model's (`init.from_path`), or apache-2.0 for a model trained from
    scratch. Destination checks are the caller's (`densa.outputs`); the folder is written atomically.
    `lora_export` (merged | adapter) overrides the recipe's `lora.export` for a LoRA run's weights.
    """
    import yaml

    from densa.inference import data_rows, export_model, last_metrics
    from densa.lora.adapters import is_lora_state, merge_lora_state

    recipe: dict[str, Any] = (yaml.safe_load(recipe_text) or {}) if recipe_text else {}
    init = (recipe.get("init") or {}).get("from_path")
    config = with_source_metadata(config, init)
    if is_lora_state(state):
        lora = recipe_lora(recipe)
        if (lora_export or lora.export) == "adapter":
            from densa.lora.export import export_adapter

            name = (run or folder or Path(out)).name
            return export_adapter(
                out, config, state, lora, tokenizer=tokenizer, dtype=dtype, name=name, license=license,
                overwrite=overwrite,
            )  # fmt: skip
        state = merge_lora_state(state, lora)
    elif lora_export == "adapter":
        raise DensaError(
            f"{folder or run}: holds no LoRA adapters (not a lora.enabled run); export it merged"
        )
    found_sparsity, found_predictors = side_files(folder, run)
    metrics_file = run / "metrics.jsonl" if run is not None else None
    return export_model(
        out,
        config,
        state,
        tokenizer=tokenizer,
        dtype=dtype,
        name=(run or folder or Path(out)).name,
        license=license,
        recipe_text=recipe_text,
        data=data_rows(recipe, base=run),
        metrics=last_metrics(metrics_file, step) if metrics_file else {},
        sparsity_report=sparsity_report or found_sparsity,
        predictors=predictors or found_predictors,
        overwrite=overwrite,
    )
