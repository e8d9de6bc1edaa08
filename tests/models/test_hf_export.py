"""densa -> HF folder -> AutoModelForCausalLM.from_pretrained: same logits (fp32, ≤ 1e-5)."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from densa.models import ModelConfig, RopeScaling, Transformer
from densa.models.checkpoint_io import load_transformer, save_transformer
from densa.models.generation import generate
from densa.models.hf import export_hf, load_hf_model
from densa.models.hf.parity import tiny_hf_model

ATOL = 1e-5


def _model(**overrides) -> Transformer:
    base = dict(vocab_size=256, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=96, max_seq_len=128)
    torch.manual_seed(0)
    model = Transformer(ModelConfig(**{**base, **overrides})).eval()
    with torch.no_grad():  # norms ≠ 1 and biases ≠ 0, so a dropped or swapped one shows
        for name, param in model.named_parameters():
            if name.endswith(("norm.weight", ".bias")):
                param.add_(0.1 * torch.randn_like(param))
    return model


def _ids(seq: int = 24, batch: int = 2) -> torch.Tensor:
    return torch.randint(0, 256, (batch, seq), generator=torch.Generator().manual_seed(1))


def _round_trip(model: Transformer, tmp_path, **load_kwargs):
    export_hf(tmp_path / "hf", model)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32, **load_kwargs).eval()
    ids = _ids()
    with torch.no_grad():
        diff = (hf(ids).logits - model(ids)).abs().max().item()
    return hf, diff


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"tie_embeddings": True},
        {"n_kv_heads": 1},
        {"qkv_bias": True},
        {"activation": "relu2"},
        {"activation": "gelu_tanh", "tie_embeddings": True},
        {"rope_scaling": RopeScaling(type="linear", factor=2.0)},
        {
            "rope_scaling": RopeScaling(type="llama3", factor=8.0, original_max_position_embeddings=16),
            "rope_theta": 500000.0,
        },
    ],
    ids=lambda v: ",".join(f"{k}={getattr(x, 'type', x)}" for k, x in v.items()) or "default",
)
def test_export_round_trip_llama(overrides, tmp_path):
    model = _model(**overrides)
    hf, diff = _round_trip(model, tmp_path)
    assert type(hf).__name__ == "LlamaForCausalLM"
    assert diff <= ATOL
    with safe_open(tmp_path / "hf" / "model.safetensors", "pt") as f:
        keys = set(f.keys())
    assert ("lm_head.weight" in keys) == (not model.config.tie_embeddings)
    assert hf.config.tie_word_embeddings == model.config.tie_embeddings
    # And back into densa: the same tensors.
    again = load_hf_model(tmp_path / "hf")
    for key, value in model.state_dict().items():
        torch.testing.assert_close(again.state_dict()[key], value, rtol=0, atol=0)


def test_qwen2_origin_exports_as_qwen2(tmp_path):
    source = tiny_hf_model("qwen2")
    source.save_pretrained(tmp_path / "src")
    model = load_hf_model(tmp_path / "src")
    hf, diff = _round_trip(model, tmp_path)
    assert type(hf).__name__ == "Qwen2ForCausalLM"
    assert diff <= ATOL


@pytest.mark.parametrize("activation", ["relu2", "relu"])
def test_plain_ffn_exports_remote_code(activation, tmp_path, caplog):
    model = _model(gated=False, activation=activation, tie_embeddings=True)
    with caplog.at_level(logging.WARNING):
        hf, diff = _round_trip(model, tmp_path, trust_remote_code=True)
    assert "trust_remote_code=True" in caplog.text
    assert type(hf).__name__ == "DensaForCausalLM"
    assert diff <= ATOL
    code = (tmp_path / "hf" / "modeling_densa.py").read_text()
    assert "densa." not in code.replace("densa.py", "")  # loadable without densa installed
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_densa.DensaForCausalLM"
    assert load_hf_model(tmp_path / "hf").config.gated is False


def test_sharded_export(tmp_path):
    model = _model()
    export_hf(tmp_path / "hf", model, max_shard_size="40KB")
    index = json.loads((tmp_path / "hf" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32)
    ids = _ids()
    assert (hf(ids).logits - model(ids)).abs().max() <= ATOL


def test_bf16_export(tmp_path):
    model = _model()
    export_hf(tmp_path / "hf", model, dtype=torch.bfloat16)
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["torch_dtype"] == "bfloat16"
    assert config["eos_token_id"] is None  # never HF's LlamaConfig default (2) for a densa-native model
    assert load_hf_model(tmp_path / "hf", dtype=torch.bfloat16).embed_tokens.weight.dtype == torch.bfloat16


def test_greedy_generation_matches_hf(tmp_path):
    source = tiny_hf_model("llama", tie_word_embeddings=True)
    source.generation_config.eos_token_id = None
    source.generation_config.pad_token_id = 0
    source.save_pretrained(tmp_path / "src")
    model = load_hf_model(tmp_path / "src")
    prompt = _ids(seq=12, batch=1)
    theirs = source.generate(prompt, max_new_tokens=24, do_sample=False)
    ours = generate(model, prompt, max_new_tokens=24)
    assert ours.tolist() == theirs.tolist()


def test_kv_cache_decode_equals_full_forward(tmp_path):
    source = tiny_hf_model("qwen2")
    source.save_pretrained(tmp_path / "src")
    model = load_hf_model(tmp_path / "src")
    ids = _ids(seq=20, batch=2)
    with torch.no_grad():
        full = model(ids)
        cache = model.new_kv_cache(initial_capacity=4)  # forces the cache to grow mid-decode
        steps = [model(ids[:, :8], kv_cache=cache)]
        steps += [model(ids[:, t : t + 1], kv_cache=cache) for t in range(8, 20)]
        assert (torch.cat(steps, dim=1) - full).abs().max() <= ATOL
        assert (full - source(ids).logits).abs().max() <= ATOL


def test_densa_folder_round_trip(tmp_path):
    model = _model(tie_embeddings=True, qkv_bias=True, rope_scaling=RopeScaling(type="linear", factor=2.0))
    save_transformer(tmp_path / "ckpt", model)
    loaded = load_transformer(tmp_path / "ckpt")
    assert loaded.config == model.config
    ids = _ids()
    assert torch.equal(loaded(ids), model(ids))
    assert not list(tmp_path.glob(".ckpt.tmp-*"))  # the temp folder was renamed away
