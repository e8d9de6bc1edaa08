"""With `init.from_path`, the model's shape comes from the checkpoint: the recipe's `model:` section is
optional.

Fields left out are read from the init folder's config (HF folder, densa model folder, training checkpoint
or run dir; its weights are not read). Fields given replace them: the non-shape ones (`max_seq_len`,
`init_std`, `activation_threshold`, `extra`) freely, the shape ones only where they agree with the folder
(floats to a relative 1e-6, so `1e-5` and float32's `9.999999747e-06` agree). A disagreement is a recipe
problem at `model.FIELD` naming both values, so `densa check` reports it instead of the trainer failing at
init. An HF folder's context is the recipe's `model.max_seq_len`, else `data.seq_len` (its
`max_position_embeddings` is kept in `extra` and written back on export).

The folder is read when the model section lacks a required field, and when the recipe is checked; a
resolved recipe (every field given, as saved in run dirs and checkpoints) loads unchecked without it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from densa.config.checks import Problem
from densa.config.schema import DataSection
from densa.errors import DensaError
from densa.models.config import ModelConfig, shape_differences

REQUIRED = tuple(
    f.name
    for f in dataclasses.fields(ModelConfig)
    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
)


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _read(path: str, given: Mapping[str, Any], data: Any) -> ModelConfig:
    from densa.train.finetune import read_model_config

    seq_len = data.get("seq_len") if isinstance(data, Mapping) else None
    context = _int(given.get("max_seq_len")) or _int(seq_len) or DataSection().seq_len
    return read_model_config(path, max_seq_len=context)


def fill_model(composed: dict[str, Any], check: bool) -> tuple[ModelConfig | None, list[Problem]]:
    """Complete `composed["model"]` (in place) from `init.from_path`; returns the folder's config (None when
    not read) and the problems found. Read when the section lacks a required field, or with `check`."""
    init = composed.get("init")
    path = init.get("from_path") if isinstance(init, Mapping) else None
    given = composed.get("model")
    if not isinstance(path, str) or not path or not isinstance(given, Mapping | None):
        return None, []  # no init folder, or a malformed section the builder reports
    given = dict(given or {})
    incomplete = [k for k in REQUIRED if k not in given]
    if not incomplete and not check:
        return None, []
    try:
        source = _read(path, given, composed.get("data"))
    except DensaError as err:
        if not incomplete:
            return None, []  # the trainer reports an unreadable folder when it loads the weights
        why = (
            f"the model: section lacks {', '.join(incomplete)}, which are read from init.from_path when"
            f" left out, but {err}"
        )
        return None, [Problem("init.from_path", why)]
    merged = {**dataclasses.asdict(source), **given}
    if isinstance(given.get("extra"), Mapping | None):
        merged["extra"] = {**source.extra, **(given.get("extra") or {})}
    composed["model"] = merged
    return source, []


def model_problems(model: ModelConfig, source: ModelConfig, path: str) -> list[Problem]:
    """One problem per shape field where the recipe's model disagrees with init.from_path's."""
    return [
        Problem(
            f"model.{name}",
            f"{ours!r} in the recipe, {theirs!r} in init.from_path {path}: a finetune keeps the loaded"
            f" model's shape (leave model.{name} out to take it from there)",
        )
        for name, (ours, theirs) in shape_differences(model, source).items()
    ]
