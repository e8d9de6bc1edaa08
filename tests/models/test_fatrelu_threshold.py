"""FATReLU's threshold (ModelConfig.activation_threshold) survives checkpoints, HF export/import, ProSparse's
trained_model_config and the sparse decode path."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from densa.config.load import load_recipe_dict
from densa.inference import sparse_ffn_installed
from densa.models import ModelConfig, Transformer
from densa.models.checkpoint_io import load_transformer, save_transformer
from densa.models.generation import generate
from densa.models.hf import export_hf, hf_flavour, load_hf_model
from densa.sparsity.prosparse import fatrelu_hooks
from densa.train.methods import trained_model_config
from densa.train.run import build_model

T = 0.1
ATOL = 1e-5
BASE = dict(vocab_size=256, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=96, max_seq_len=128)


def _model(threshold: float = T, **overrides) -> Transformer:
    torch.manual_seed(0)
    cfg = ModelConfig(**{**BASE, "activation": "relu", "activation_threshold": threshold, **overrides})
    return Transformer(cfg).eval()


def _ids(seq: int = 24, batch: int = 2) -> torch.Tensor:
    return torch.randint(0, 256, (batch, seq), generator=torch.Generator().manual_seed(1))


def _same_weights(model: Transformer, threshold: float) -> Transformer:
    other = Transformer(dataclasses.replace(model.config, activation_threshold=threshold)).eval()
    other.load_state_dict(model.state_dict())
    return other


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"activation_threshold": -0.1}, "activation_threshold must be finite and >= 0"),
        ({"activation_threshold": float("nan")}, "activation_threshold must be finite and >= 0"),
        (
            {"activation_threshold": 0.1, "activation": "silu"},
            "activation_threshold .* needs activation: relu",
        ),
    ],
)
def test_config_validation(overrides, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**{**BASE, "activation": "relu", **overrides})


@pytest.mark.parametrize("gated", [True, False])
def test_ffn_applies_fatrelu_and_matches_training_hooks(gated):
    model = _model(gated=gated)
    plain = _same_weights(model, 0.0)
    ids = _ids()
    with torch.no_grad():
        ours, relu = model(ids), plain(ids)
        assert (ours - relu).abs().max() > 1e-3  # T matters on this model, so the tests below can fail
        with fatrelu_hooks(plain, T):  # what ProSparse training computes: the same function
            torch.testing.assert_close(plain(ids), ours, rtol=0, atol=ATOL)
    # hook_pre_act sees the gate/up pre-activation g, hook_act the FATReLU output (times up when gated).
    ffn, seen = model.layers[0].ffn, {}
    handles = [
        ffn.hook_pre_act.register_forward_hook(lambda _m, _i, out: seen.setdefault("g", out)),
        ffn.hook_act.register_forward_hook(lambda _m, _i, out: seen.setdefault("a", out)),
    ]
    with torch.no_grad():
        model(ids)
    for h in handles:
        h.remove()
    g, a = seen["g"], seen["a"]
    assert ((g > 0) & (g <= T)).any()
    assert (a[g <= T] == 0).all() and (a[g > T] != 0).any()
    if not gated:
        torch.testing.assert_close(a, torch.where(g > T, g, 0.0), rtol=0, atol=0)


def test_densa_checkpoint_round_trip(tmp_path):
    model = _model()
    save_transformer(tmp_path / "m", model)
    again = load_transformer(tmp_path / "m")
    assert again.config.activation_threshold == T
    ids = _ids()
    with torch.no_grad():
        torch.testing.assert_close(again(ids), model(ids), rtol=0, atol=0)


@pytest.mark.parametrize("gated", [True, False])
def test_hf_export_remote_code_parity(gated, tmp_path, caplog):
    model = _model(gated=gated, tie_embeddings=True)
    assert hf_flavour(model.config) == "densa"  # never a plain Llama hidden_act: relu
    export_hf(tmp_path / "hf", model)
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["model_type"] == "densa" and config["activation_threshold"] == T
    assert config["hidden_act"] == "relu" and config["gated_ffn"] is gated
    hf = AutoModelForCausalLM.from_pretrained(
        tmp_path / "hf", dtype=torch.float32, trust_remote_code=True
    ).eval()
    assert type(hf).__name__ == "DensaForCausalLM"
    ids = _ids()
    with torch.no_grad():
        theirs, ours = hf(ids).logits, model(ids)
        relu = _same_weights(model, 0.0)(ids)
    assert (theirs - ours).abs().max().item() <= ATOL
    assert (theirs - relu).abs().max().item() > 1e-3
    back = load_hf_model(tmp_path / "hf")
    assert back.config.activation_threshold == T and back.config.gated is gated
    with torch.no_grad():
        torch.testing.assert_close(back(ids), ours, rtol=0, atol=ATOL)


def test_zero_threshold_gated_relu_still_exports_as_llama():
    assert hf_flavour(_model(0.0).config) == "llama"


def _recipe(*overrides: str):
    base = {
        "model": {**{k: v for k, v in BASE.items() if k != "max_seq_len"}, "activation": "silu"},
        "data": {"train": [{"path": "d/train"}], "seq_len": 32},
        "batch": {"global_tokens": 1024, "micro_batch": 2},
        "train": {"steps": 100},
    }
    return load_recipe_dict(base, "r.yaml", list(overrides))


def test_trained_model_config_records_fatrelu_threshold():
    fat = _recipe(f"sparsity.prosparse={{enabled: true, activation: fatrelu, fatrelu_threshold: {T}}}")
    # Training builds cfg.model (plain ReLU after the swap) and FATReLUCallback's hooks add T: once.
    built = build_model(fat)
    assert built.config.activation_threshold == 0.0
    assert all(block.ffn.act_fn is F.relu for block in built.layers)
    trained = trained_model_config(fat)
    assert (trained.activation, trained.activation_threshold) == ("relu", T)
    relu = trained_model_config(_recipe("sparsity.prosparse.enabled=true"))
    assert (relu.activation, relu.activation_threshold) == ("relu", 0.0)
    assert trained_model_config(_recipe()).activation_threshold == 0.0


@pytest.mark.parametrize("gated", [True, False])
def test_sparse_decode_at_zero_threshold_is_exact(gated):
    model = _model(gated=gated)
    prompt = _ids(seq=8, batch=1)
    dense_tokens = generate(model, prompt, max_new_tokens=12)
    cache = model.new_kv_cache()
    with torch.no_grad():
        model(prompt[:, :-1], kv_cache=cache)
        dense_step = model(prompt[:, -1:], kv_cache=cache)
        with sparse_ffn_installed(model, [0.0, 0.0]) as wrappers:
            assert all(bool((w.thresholds >= T).all()) for w in wrappers)  # max(t_i, T)
            sparse_tokens = generate(model, prompt, max_new_tokens=12)
            cache = model.new_kv_cache()
            model(prompt[:, :-1], kv_cache=cache)
            sparse_step = model(prompt[:, -1:], kv_cache=cache)
    torch.testing.assert_close(sparse_step, dense_step, rtol=0, atol=ATOL)
    assert sparse_tokens.tolist() == dense_tokens.tolist()
