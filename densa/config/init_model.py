"""With `init.from_path`, the model's shape comes from the checkpoint: the recipe's `model:` section is
optional.

Fields left out are read from the init folder's config (HF folder, densa model folder, training checkpoint
or run dir; its weights are not read). Fields given replace them: the non-shape ones (`max_seq_len`,
`init_std`, `activation_threshold`, `extra`) freely, the shape ones only where they agree with the folder
(floats to a relative 1e-6, so `1e-5` and float32's `9.999999747e-06` agree). A disagreement is a recipe
problem at `model.FIELD` naming both values, so `densa check` reports it instead of the trainer failing at
init. An HF folder's context is its `max_position_embeddings` unless `model.max_seq_len` is given (a
Mistral-style sliding window shorter than that needs it).

The folder is read when the model section lacks a required field, and when the recipe is checked; a
resolved recipe (every field given, as saved in run dirs and checkpoints) loads unchecked without it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, NamedTuple

from densa.config.checks import Problem
from densa.errors import DensaError
from densa.models.config import NOT_SHAPE_FIELDS, ModelConfig, shape_differences, values_agree

REQUIRED = tuple(
    f.name
    for f in dataclasses.fields(ModelConfig)
    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
)


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _read(path: str, given: Mapping[str, Any]) -> ModelConfig:
    from densa.train.finetune import read_model_config

    return read_model_config(path, max_seq_len=_int(given.get("max_seq_len")))


class InitModel(NamedTuple):
    """What `fill_model` found: the folder's config (None when not read) and the recipe's own fields."""

    source: ModelConfig | None
    path: str = ""
    given: dict[str, Any] = {}
    problems: list[Problem] = []


def fill_model(composed: dict[str, Any], check: bool) -> InitModel:
    """Complete `composed["model"]` (in place) from `init.from_path`. The folder is read when the section
    lacks a required field, or with `check`; `problems` says why it could not be when it had to be."""
    init = composed.get("init")
    path = init.get("from_path") if isinstance(init, Mapping) else None
    given = composed.get("model")
    if not isinstance(path, str) or not path or not isinstance(given, Mapping | None):
        return InitModel(None)  # no init folder, or a malformed section the builder reports
    given = dict(given or {})
    incomplete = [k for k in REQUIRED if k not in given]
    if not incomplete and not check:
        return InitModel(None)
    try:
        source = _read(path, given)
    except DensaError as err:
        if not incomplete:
            return InitModel(None)  # the trainer reports an unreadable folder when it loads the weights
        why = (
            f"the model: section lacks {', '.join(incomplete)}, which are read from init.from_path when"
            f" left out, but {err}"
        )
        return InitModel(None, path, given, [Problem("init.from_path", why)])
    merged = {**dataclasses.asdict(source), **given}
    if isinstance(given.get("extra"), Mapping | None):
        merged["extra"] = {**source.extra, **(given.get("extra") or {})}
    composed["model"] = merged
    return InitModel(source, path, given)


def _problem(name: str, ours: Any, theirs: Any, path: str) -> Problem:
    return Problem(
        f"model.{name}",
        f"{ours!r} in the recipe, {theirs!r} in init.from_path {path}: a finetune keeps the loaded"
        f" model's shape (leave model.{name} out to take it from there)",
    )


def model_problems(model: ModelConfig | None, init: InitModel) -> list[Problem]:
    """One problem per shape field where the recipe's model disagrees with init.from_path's. `model` None
    (the recipe's model section did not build): its scalar fields as written are compared instead."""
    if init.source is None:
        return []
    if model is not None:
        diff = shape_differences(model, init.source)
    else:
        theirs = dataclasses.asdict(init.source)
        scalars = {
            k: v
            for k, v in init.given.items()
            if k in theirs and k not in NOT_SHAPE_FIELDS and isinstance(v, int | float | str)
        }
        diff = {k: (v, theirs[k]) for k, v in scalars.items() if not values_agree(v, theirs[k])}
    return [_problem(name, ours, theirs, init.path) for name, (ours, theirs) in diff.items()]
