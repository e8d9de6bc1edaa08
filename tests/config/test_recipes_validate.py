"""Every recipe in recipes/ (including ones added later) loads, validates and round-trips."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from densa.config.checks import validate
from densa.config.deepspeed_config import build_deepspeed_config
from densa.config.load import dump_recipe, load_recipe, load_recipe_dict

RECIPES = sorted((Path(__file__).resolve().parents[2] / "recipes").glob("*.yaml"))


def test_recipes_found() -> None:
    assert {p.name for p in RECIPES} >= {"tiny_pretrain.yaml", "pretrain_10m.yaml", "sft_example.yaml"}


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_recipe_validates(path: Path) -> None:
    cfg = load_recipe(path)
    world_size = cfg.parallel.tp  # the smallest world the recipe can run on
    validate(cfg, world_size, source=path.name)
    ds = build_deepspeed_config(cfg, world_size)
    assert ds["train_batch_size"] * cfg.data.seq_len == cfg.batch.global_tokens
    assert load_recipe_dict(yaml.safe_load(dump_recipe(cfg)), path.name) == cfg
