"""One gradient-clipping rule for retaining heads (issue 18, item 8): `train_heads` clips to the global
norm that the recipe's `optim.grad_clip` names, with its default, as the engine does for a heads run."""

from __future__ import annotations

import inspect

import torch

from densa.config.deepspeed_config import build_deepspeed_config
from densa.config.schema import OptimSection
from densa.models import Transformer
from densa.retaining_heads import train_heads
from densa.retaining_heads.training import GRAD_CLIP
from densa.testing.models import random_tokens, tiny_model_config


def _batch(config) -> dict[str, torch.Tensor]:
    ids = random_tokens(config, batch=2, seq=16, seed=1)
    answer = torch.zeros_like(ids, dtype=torch.bool)
    answer[:, -4:] = True
    return {"input_ids": ids, "answer_mask": answer}


def test_python_route_clips_like_the_recipe(monkeypatch) -> None:
    assert (
        inspect.signature(train_heads).parameters["grad_clip"].default
        == GRAD_CLIP
        == OptimSection().grad_clip
    )
    calls: list[float] = []
    real = torch.nn.utils.clip_grad_norm_

    def spy(params, max_norm, *args, **kwargs):
        calls.append(max_norm)
        return real(params, max_norm, *args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)
    model = Transformer(tiny_model_config()).eval()
    train_heads(model, [_batch(model.config)], steps=2, hidden=4)
    assert calls == [1.0, 1.0]
    calls.clear()
    train_heads(
        Transformer(tiny_model_config()).eval(), [_batch(model.config)], steps=1, hidden=4, grad_clip=0.25
    )
    assert calls == [0.25]
    calls.clear()
    train_heads(
        Transformer(tiny_model_config()).eval(), [_batch(model.config)], steps=1, hidden=4, grad_clip=0
    )
    assert calls == []  # 0 disables, as optim.grad_clip: 0 does


def test_recipe_route_clips_by_global_norm(tmp_path) -> None:
    from densa.config.load import load_recipe

    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "model: {vocab_size: 64, dim: 32, n_layers: 2, n_heads: 4, ffn_dim: 64}\n"
        "init: {from_path: backbone}\nretaining_heads: {enabled: true}\noptim: {grad_clip: 0.25}\n",
        encoding="utf-8",
    )
    cfg = load_recipe(recipe, check=False)
    assert build_deepspeed_config(cfg, world_size=1)["gradient_clipping"] == 0.25
