"""Error messages in the user's terms: the CLI flag or recipe key, and the Python keyword for Python users."""

from __future__ import annotations

import pytest

from densa.errors import DensaError
from densa.outputs import check_replaceable, write_marker


def test_overwrite_message_names_flag_or_keyword(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "x").write_text("1")
    write_marker(folder, "hf")
    with pytest.raises(DensaError) as cli:
        check_replaceable(folder, False)  # name="--out": a CLI caller
    assert str(cli.value) == f"{folder} already exists and is not empty (pass --overwrite to replace it)"
    with pytest.raises(DensaError) as py:
        check_replaceable(folder, False, name="output folder")  # densa.models.checkpoint_io.atomic_dir
    assert str(py.value) == (
        f"{folder} already exists and is not empty (pass overwrite=True (CLI: --overwrite) to replace it)"
    )


def test_missing_heads_names_recipe_and_flag():
    from densa.models.config import ModelConfig
    from densa.models.transformer import Transformer
    from densa.retaining_heads.heads import get_heads

    model = Transformer(ModelConfig(vocab_size=32, dim=16, n_layers=1, n_heads=2, ffn_dim=32, max_seq_len=8))
    with pytest.raises(DensaError) as err:
        get_heads(model)
    assert str(err.value) == (
        "Transformer has no retaining heads: train them with a `retaining_heads:` recipe (densa train, see"
        " docs/locret.md) and give the heads file (densa generate --heads FILE); from Python:"
        " densa.retaining_heads.load_heads(model, path), or attach_heads(model) and train them"
    )


def test_check_warns_when_wandb_is_missing(monkeypatch):
    import importlib.util

    from densa.config.load import load_recipe_dict
    from densa.launch.commands.check import environment_warnings

    recipe = {
        "model": {"vocab_size": 32, "dim": 16, "n_layers": 1, "n_heads": 2, "ffn_dim": 32},
        "data": {"train": [{"path": "d/t"}], "seq_len": 8},
        "batch": {"global_tokens": 16, "micro_batch": 2},
        "logging": {"wandb": {"project": "p", "mode": "OFFLINE"}},
    }
    cfg = load_recipe_dict(recipe)
    assert cfg.logging.wandb.mode == "offline"  # a Literal choice, matched case-insensitively
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a)
    )
    assert "logging.wandb.project: wandb is not installed (pip install wandb)" in environment_warnings(cfg)


def test_missing_model_folder_names_hf_download(tmp_path):
    from densa.train.finetune import load_weights

    missing = tmp_path / "SmolLM2-135M"
    with pytest.raises(DensaError) as err:
        load_weights(missing)
    assert str(err.value) == (
        f"{missing}: no such folder (expected an HF folder, densa model or checkpoint;"
        f" a model on the Hub: hf download ORG/NAME --local-dir {missing})"
    )
