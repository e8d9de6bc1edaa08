"""Shapes come from the checkpoint (issue 18, item 2): with `init.from_path` the recipe's `model:` section
is optional; fields given must agree with the folder (floats to a relative 1e-6) and `densa check` names a
disagreement; a run without a model section trains from the folder's weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from densa.config.errors import ConfigError
from densa.config.load import dump_recipe, load_recipe, load_recipe_dict
from densa.launch.cli import main
from densa.models.hf.importer import load_hf_state
from densa.models.hf.parity import tiny_hf_model

SEQ = 16
FLOAT32_EPS = 9.999999747378752e-06  # what a float32 copy of norm_eps 1e-5 records (GGUF-dequantized SmolLM2)
SHAPE = {"vocab_size": 256, "dim": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "ffn_dim": 96}


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("init") / "hf"
    tiny_hf_model("llama", rms_norm_eps=FLOAT32_EPS, rope_theta=50000.0).save_pretrained(folder)
    return folder


def recipe(tmp_path: Path, hf_folder: Path, model: dict | None = None) -> dict:
    data = {
        "run": {"out_dir": str(tmp_path / "run"), "seed": 3},
        "init": {"from_path": str(hf_folder)},
        "data": {"train": [{"path": "unused"}], "seq_len": SEQ},
        "batch": {"global_tokens": 4 * SEQ, "micro_batch": 2},
        "train": {"steps": 1},
        "optim": {"lr": 1e-2},
        "schedule": {"kind": "constant"},
        "checkpoint": {"interval": 1000, "keep_last": 1},
        "logging": {"log_interval": 1, "tensorboard": False, "progress": False},
    }
    if model is not None:
        data["model"] = model
    return data


def test_model_section_left_out_is_read_from_the_folder(tmp_path, hf_folder):
    cfg = load_recipe_dict(recipe(tmp_path, hf_folder), str(tmp_path / "r.yaml"))
    m = cfg.model
    got = {k: getattr(m, k) for k in SHAPE}
    assert got == SHAPE
    assert (m.norm_eps, m.rope_theta, m.head_dim, m.activation, m.gated) == (
        FLOAT32_EPS,
        50000.0,
        16,
        "silu",
        True,
    )
    assert m.max_seq_len == 256  # the folder's max_position_embeddings
    # The resolved recipe (saved in run dirs and checkpoints) has every field and loads unchecked as is.
    assert load_recipe_dict(yaml.safe_load(dump_recipe(cfg)), "resolved.yaml", check=False) == cfg


def test_partial_model_section_overrides_non_shape_fields(tmp_path, hf_folder):
    cfg = load_recipe_dict(recipe(tmp_path, hf_folder, {"max_seq_len": 64, "init_std": 0.01}), "r.yaml")
    assert (cfg.model.max_seq_len, cfg.model.init_std, cfg.model.dim) == (64, 0.01, 64)


def test_float32_norm_eps_agrees_with_1e_5(tmp_path, hf_folder):
    """The recipe's 1e-5 against the folder's 9.999999747e-06 passes the check and loads the weights."""
    from densa.train.run import build_model

    full = {**SHAPE, "norm_eps": 1e-5, "rope_theta": 50000.0, "max_seq_len": SEQ}
    cfg = load_recipe_dict(recipe(tmp_path, hf_folder, full), "r.yaml")
    assert cfg.model.norm_eps == 1e-5
    model = build_model(cfg)
    _, state = load_hf_state(hf_folder)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


def test_check_names_a_disagreeing_field_and_both_values(tmp_path, hf_folder, capsys):
    path = tmp_path / "recipe.yaml"
    model = {**SHAPE, "n_heads": 8, "n_kv_heads": 2, "norm_eps": 1.1e-5}
    path.write_text(yaml.safe_dump(recipe(tmp_path, hf_folder, model)), encoding="utf-8")
    assert main(["check", str(path), "--quiet"]) == 1
    err = capsys.readouterr().err
    where = f"init.from_path {hf_folder}: a finetune keeps the loaded model's shape"
    assert f"{path}: model.n_heads: 8 in the recipe, 4 in {where} (leave model.n_heads out" in err
    assert f"{path}: model.norm_eps: 1.1e-05 in the recipe, {FLOAT32_EPS!r} in {where}" in err
    assert "model.dim" not in err and "model.norm_eps: 1e-05" not in err
    with pytest.raises(ConfigError, match=r"model\.rope_theta: 10000\.0 in the recipe, 50000\.0 in init"):
        load_recipe_dict(recipe(tmp_path, hf_folder, {"rope_theta": 10000}), "r.yaml")
    # A disagreement that also breaks the model (3 heads over the folder's 2 KV heads) is still named.
    with pytest.raises(ConfigError) as info:
        load_recipe_dict(recipe(tmp_path, hf_folder, {"n_heads": 3}), "r.yaml")
    assert info.value.problems == [
        f"r.yaml: model.n_heads: 3 in the recipe, 4 in {where} (leave model.n_heads out to take it"
        " from there)",
        "r.yaml: model: n_heads (3) must be divisible by n_kv_heads (2)",
    ]


def test_unreadable_folder_without_model_section(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_recipe_dict(recipe(tmp_path, tmp_path / "missing"), "r.yaml")
    assert (
        f"r.yaml: init.from_path: the model: section lacks vocab_size, dim, n_layers, n_heads, ffn_dim, which"
        f" are read from init.from_path when left out, but {tmp_path / 'missing'}: no such folder"
    ) in str(info.value)
    # A full model section still loads (the trainer reports the folder when it reads the weights).
    assert load_recipe_dict(recipe(tmp_path, tmp_path / "missing", SHAPE), "r.yaml").model.dim == 64


def test_recipe_without_model_section_trains_a_step(tmp_path, hf_folder, ds_world):
    from densa.train.run import build_trainer
    from densa.train.synthetic import SyntheticDataset

    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe(tmp_path, hf_folder)), encoding="utf-8")
    cfg = load_recipe(path)
    trainer = build_trainer(cfg, train_data=SyntheticDataset(256, SEQ))
    _, start = load_hf_state(hf_folder)
    assert all(torch.equal(trainer.model.state_dict()[k], v) for k, v in start.items())
    result = trainer.fit()
    assert result.state.step == 1 and torch.isfinite(torch.tensor(result.history[0]["loss"]))
    saved = yaml.safe_load((tmp_path / "run" / "recipe.yaml").read_text())
    assert saved["model"]["n_kv_heads"] == 2 and saved["model"]["norm_eps"] == FLOAT32_EPS
