"""HF -> densa: logits parity with in-process tiny transformers models (fp32, ≤ 1e-5)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from densa.errors import CheckpointError
from densa.models.hf import load_hf_model, load_hf_state
from densa.models.hf.parity import compare_with_hf, tiny_hf_model

ATOL = 1e-5
LLAMA3 = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,
}


def _ids(seq: int = 24, batch: int = 2) -> torch.Tensor:
    return torch.randint(0, 256, (batch, seq), generator=torch.Generator().manual_seed(1))


def _import(hf_model, tmp_path, **kwargs):
    hf_model.save_pretrained(tmp_path / "hf")
    return load_hf_model(tmp_path / "hf", **kwargs)


@pytest.mark.parametrize(
    ("model_type", "overrides"),
    [
        ("llama", {}),
        ("llama", {"tie_word_embeddings": True}),
        ("llama", {"num_key_value_heads": 1}),  # MQA, an extreme of GQA
        ("llama", {"num_key_value_heads": 4, "head_dim": 32}),  # MHA, head_dim ≠ hidden / heads
        ("llama", {"attention_bias": True}),
        ("llama", {"hidden_act": "relu2"}),
        ("llama", {"hidden_act": "gelu_pytorch_tanh"}),
        ("mistral", {"sliding_window": None}),
        ("qwen2", {}),
        ("qwen2", {"tie_word_embeddings": True}),
    ],
    ids=lambda v: v if isinstance(v, str) else ",".join(f"{k}={x}" for k, x in v.items()) or "default",
)
def test_import_logits_match(model_type, overrides, tmp_path):
    hf = tiny_hf_model(model_type, **overrides)
    if overrides.get("attention_bias"):
        for layer in hf.model.layers:  # densa has no o_proj bias; a zero one converts exactly
            layer.self_attn.o_proj.bias.data.zero_()
    model = _import(hf, tmp_path)
    report = compare_with_hf(model, hf, _ids())
    assert report.logits_max_abs <= ATOL, report.summary()
    assert report.first_divergent(ATOL) is None
    assert model.config.extra["hf_model_type"] == model_type
    assert model.config.qkv_bias == (model_type == "qwen2" or bool(overrides.get("attention_bias")))


@pytest.mark.parametrize(
    "scaling", [{"rope_type": "linear", "factor": 4.0}, LLAMA3], ids=["linear", "llama3"]
)
def test_import_rope_scaling(scaling, tmp_path):
    # 96 positions: well past original_max_position_embeddings=16, so llama3 band blending matters.
    hf = tiny_hf_model("llama", rope_scaling=scaling, rope_theta=500000.0)
    model = _import(hf, tmp_path)
    assert model.config.rope_scaling.type == scaling["rope_type"]
    assert model.config.rope_theta == 500000.0
    ids = _ids(seq=96, batch=1)
    report = compare_with_hf(model, hf, ids)
    assert report.logits_max_abs <= ATOL, report.summary()
    # The test is only meaningful if scaling changes the result.
    unscaled = tiny_hf_model("llama", rope_theta=500000.0)
    assert (unscaled(ids).logits - hf(ids).logits).abs().max() > 1e-3


def test_layer_diff_names_first_divergent_block(tmp_path):
    hf = tiny_hf_model("llama", num_hidden_layers=3)
    model = _import(hf, tmp_path)
    with torch.no_grad():
        model.layers[1].ffn_norm.weight.mul_(1.01)  # a small mapping-style error in block 1
    report = compare_with_hf(model, hf, _ids())
    assert report.first_divergent(ATOL) == "layers.1"
    assert report.blocks[0][1] <= ATOL


def test_import_sharded_safetensors_and_bin(tmp_path):
    hf = tiny_hf_model("llama")
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="40KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    _, sharded = load_hf_state(tmp_path / "sharded")
    # A pytorch_model.bin folder: same config, weights as a torch pickle.
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "config.json").write_text((tmp_path / "sharded" / "config.json").read_text())
    torch.save(hf.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    _, from_bin = load_hf_state(tmp_path / "bin")
    assert sharded.keys() == from_bin.keys()
    for key in sharded:
        torch.testing.assert_close(sharded[key], from_bin[key], rtol=0, atol=0)


def test_import_keeps_dtype_and_generation_config(tmp_path):
    hf = tiny_hf_model("llama").to(torch.bfloat16)
    hf.generation_config.eos_token_id = 7
    hf.save_pretrained(tmp_path / "hf")
    config, state = load_hf_state(tmp_path / "hf")
    assert state["embed_tokens.weight"].dtype == torch.bfloat16
    assert config.extra["hf_generation_config"]["eos_token_id"] == 7


def test_mistral_sliding_window_must_cover_the_context(tmp_path):
    hf = tiny_hf_model("mistral", sliding_window=32, max_position_embeddings=256)
    hf.save_pretrained(tmp_path / "hf")
    with pytest.raises(CheckpointError, match=r"sliding_window=32 < max sequence length 256.*max_seq_len"):
        load_hf_model(tmp_path / "hf")
    # Within the window, full attention is exact.
    model = load_hf_model(tmp_path / "hf", max_seq_len=32)
    report = compare_with_hf(model, hf, _ids(seq=32))
    assert report.logits_max_abs <= ATOL, report.summary()


def test_unsupported_rope_scaling_is_named(tmp_path):
    hf = tiny_hf_model("llama")
    hf.save_pretrained(tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    config["rope_parameters"] = {"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0}
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="rope scaling type 'yarn' is not supported"):
        load_hf_model(tmp_path / "hf")


def test_legacy_4x_config_keys(tmp_path):
    """transformers 4.x wrote rope_theta / rope_scaling at top level with `type`."""
    hf = tiny_hf_model("llama", rope_scaling={"rope_type": "linear", "factor": 2.0}, rope_theta=20000.0)
    hf.save_pretrained(tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    del config["rope_parameters"]
    config.update(rope_theta=20000.0, rope_scaling={"type": "linear", "factor": 2.0})
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    model = load_hf_model(tmp_path / "hf")
    assert model.config.rope_theta == 20000.0 and model.config.rope_scaling.factor == 2.0
    assert compare_with_hf(model, hf, _ids()).logits_max_abs <= ATOL


def test_nonzero_o_proj_bias_is_refused(tmp_path):
    hf = tiny_hf_model("llama", attention_bias=True)
    hf.save_pretrained(tmp_path / "hf")
    with pytest.raises(CheckpointError, match="o_proj.bias is non-zero"):
        load_hf_model(tmp_path / "hf")


def test_state_keys_are_exactly_densa_parameters(tmp_path):
    hf = tiny_hf_model("qwen2", tie_word_embeddings=True)
    hf.save_pretrained(tmp_path / "hf")
    config, state = load_hf_state(tmp_path / "hf")
    from densa.models import Transformer

    assert set(state) == set(Transformer(config).state_dict())
    assert "lm_head.weight" not in state
    stored = load_file(tmp_path / "hf" / "model.safetensors")
    torch.testing.assert_close(
        state["layers.0.attn.qkv_proj.bias"],
        torch.cat([stored[f"model.layers.0.self_attn.{p}_proj.bias"] for p in "qkv"]),
    )
