"""`densa convert` both ways, and bad input failing with a message that names the problem."""

from __future__ import annotations

import json

import pytest
import torch

from densa.errors import CheckpointError
from densa.launch.cli import main
from densa.models.checkpoint_io import is_densa_checkpoint, load_transformer
from densa.models.hf import load_hf_model, load_hf_state
from densa.models.hf.parity import tiny_hf_model

IDS = torch.arange(20).reshape(1, 20)


def test_convert_hf_to_densa_and_back(tmp_path, capsys):
    hf = tiny_hf_model("llama", tie_word_embeddings=True)
    hf.save_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / "tokenizer.json").write_text("{}")  # tokenizer files travel along

    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "densa")]) == 0
    assert "converted hf folder" in capsys.readouterr().out
    assert is_densa_checkpoint(tmp_path / "densa")
    assert (tmp_path / "densa" / "tokenizer.json").is_file()
    model = load_transformer(tmp_path / "densa")
    assert (model(IDS) - hf(IDS).logits).abs().max() <= 1e-5

    assert main(["convert", str(tmp_path / "densa"), str(tmp_path / "back"), "--dtype", "bfloat16"]) == 0
    config = json.loads((tmp_path / "back" / "config.json").read_text())
    assert config["model_type"] == "llama" and config["torch_dtype"] == "bfloat16"
    assert (tmp_path / "back" / "tokenizer.json").is_file()
    back = load_hf_model(tmp_path / "back", dtype=torch.bfloat16)
    for key, value in model.state_dict().items():
        assert torch.equal(back.state_dict()[key], value.to(torch.bfloat16)), key


def test_convert_forced_target_and_overwrite(tmp_path, capsys):
    tiny_hf_model("mistral", sliding_window=None).save_pretrained(tmp_path / "hf")
    # --to hf from an HF folder: a normalising re-export (Mistral without window -> Llama).
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "out"), "--to", "hf"]) == 0
    assert json.loads((tmp_path / "out" / "config.json").read_text())["model_type"] == "llama"
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "out"), "--to", "hf"]) == 1
    assert "already exists" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "out"), "--to", "densa", "--overwrite"]) == 0
    assert is_densa_checkpoint(tmp_path / "out")


def test_missing_folder(tmp_path, capsys):
    assert main(["convert", str(tmp_path / "nope"), str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "densa convert: error:" in err and "nope: no such folder" in err


def test_folder_without_config(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["convert", str(tmp_path / "empty"), str(tmp_path / "out")]) == 1
    assert "not a model folder" in capsys.readouterr().err


def test_unsupported_model_type_is_named(tmp_path):
    (tmp_path / "gpt2").mkdir()
    (tmp_path / "gpt2" / "config.json").write_text(
        json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]})
    )
    with pytest.raises(CheckpointError, match=r"model_type='gpt2'.*GPT2LMHeadModel"):
        load_hf_state(tmp_path / "gpt2")


def test_missing_weights_name_folder_and_files(tmp_path):
    tiny_hf_model("llama").save_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / "model.safetensors").unlink()
    with pytest.raises(
        CheckpointError, match=r"hf: no weights found \(looked for model.safetensors.index.json"
    ):
        load_hf_state(tmp_path / "hf")


def test_missing_shard_is_named(tmp_path):
    tiny_hf_model("llama").save_pretrained(tmp_path / "hf", max_shard_size="40KB")
    shard = sorted((tmp_path / "hf").glob("model-*.safetensors"))[1]
    shard.unlink()
    with pytest.raises(CheckpointError, match=f"shard.*missing.*{shard.name}"):
        load_hf_state(tmp_path / "hf")


def test_missing_tensor_is_named(tmp_path):
    hf = tiny_hf_model("llama")
    state = {k: v for k, v in hf.state_dict().items() if "layers.1.mlp.up_proj" not in k}
    hf.save_pretrained(tmp_path / "hf", state_dict=state)
    with pytest.raises(CheckpointError, match=r"lacks 1 tensor.*model.layers.1.mlp.up_proj.weight"):
        load_hf_state(tmp_path / "hf")
