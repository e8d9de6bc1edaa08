"""Retaining heads: attach/detach, inputs, CIS labels, loss, frozen-backbone training, save/load."""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from densa.errors import DensaError
from densa.models import Transformer
from densa.retaining_heads import (
    RetainingHeadsCallback,
    RetainingHeadsError,
    attach_heads,
    capture_qk,
    cis_labels,
    detach_heads,
    get_heads,
    heads_loss,
    heads_state_dict,
    layer_loss,
    load_heads,
    save_heads,
    train_heads,
)
from densa.testing.models import random_tokens, tiny_model_config


@pytest.fixture
def model() -> Transformer:
    return Transformer(tiny_model_config()).eval()


def _batch(config, seq: int = 24, answers: int = 4) -> dict[str, torch.Tensor]:
    ids = random_tokens(config, batch=2, seq=seq, seed=1)
    answer = torch.zeros_like(ids, dtype=torch.bool)
    answer[:, -answers:] = True
    return {"input_ids": ids, "answer_mask": answer}


def test_attach_keeps_outputs_and_registers_params(model: Transformer) -> None:
    ids = random_tokens(model.config, seq=20)
    before = model(ids)
    heads = attach_heads(model, hidden=8)
    assert torch.equal(model(ids), before)
    assert heads.scores[0].shape == (2, model.config.n_kv_heads, 20)
    assert any(k.startswith("retaining_heads.layers.0.fc1") for k in model.state_dict())
    detach_heads(model)
    assert not any(k.startswith("retaining_heads") for k in model.state_dict())
    assert torch.equal(model(ids), before)
    with pytest.raises(RetainingHeadsError, match="has no retaining heads"):
        get_heads(model)


def test_heads_read_pre_rope_qkv(model: Transformer) -> None:
    """Locret's input is [Q; K; V] before RoPE: exactly the fused projection's output."""
    heads = attach_heads(model, hidden=8)
    seen = []
    heads.layers[1].register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    projected = []
    model.layers[1].attn.qkv_proj.register_forward_hook(lambda _m, _i, out: projected.append(out))
    model(random_tokens(model.config, seq=12))
    torch.testing.assert_close(seen[0], projected[0], atol=1e-5, rtol=1e-5)


def test_cis_labels_match_naive_loops() -> None:
    gen = torch.Generator().manual_seed(0)
    b, hq, hkv, t, d = 2, 4, 2, 7, 5
    q, k = torch.randn(b, hq, t, d, generator=gen), torch.randn(b, hkv, t, d, generator=gen)
    answer = torch.zeros(b, t, dtype=torch.bool)
    answer[0, [4, 6]] = True
    answer[1, [2]] = True
    labels = cis_labels(q, k, answer)
    group = hq // hkv
    for bi in range(b):
        for g in range(hkv):
            for j in range(t):
                cands = [
                    float(q[bi, h, p] @ k[bi, g, j]) / math.sqrt(d)
                    for p in range(t)
                    if answer[bi, p] and p >= j
                    for h in range(g * group, (g + 1) * group)
                ]
                expected = max(cands) if cands else -math.inf
                assert labels[bi, g, j].item() == pytest.approx(expected, abs=1e-5)


def test_capture_qk_gives_attention_inputs(model: Transformer) -> None:
    ids = random_tokens(model.config, seq=10)
    with capture_qk(model) as rec:
        model(ids)
    assert rec[0]["q"].shape == (2, 4, 10, 8) and rec[0]["k"].shape == (2, 2, 10, 8)


def test_layer_loss_is_smooth_l1_plus_smoothness() -> None:
    pred = torch.tensor([[[0.0, 1.0, 3.0, 0.5]]])
    label = torch.tensor([[[0.5, 1.0, 0.0, -math.inf]]])
    mask = torch.tensor([[True, True, True, False]])
    sl1 = F.smooth_l1_loss(pred[0, 0, :3], label[0, 0, :3])
    smooth = ((1.0 - 0.0) ** 2 + (3.0 - 1.0) ** 2) / 2
    assert float(layer_loss(pred, label, mask, alpha=0.1)) == pytest.approx(float(sl1) + 0.1 * smooth)


def test_only_heads_train_and_backbone_is_unchanged(model: Transformer) -> None:
    attach_heads(model, hidden=16)
    backbone = {n: p.detach().clone() for n, p in model.named_parameters() if "retaining_heads" not in n}
    heads_before = {k: v.clone() for k, v in heads_state_dict(model).items()}
    batch = _batch(model.config)

    history = train_heads(model, [batch], steps=3, lr=1e-2)
    assert len(history) == 3 and all(math.isfinite(h["cis_loss"]) for h in history)
    for name, param in model.named_parameters():
        if name in backbone:
            assert torch.equal(param, backbone[name]), name
    assert all(not torch.equal(heads_before[k], v) for k, v in heads_state_dict(model).items())

    sft = {"input_ids": batch["input_ids"], "loss_mask": batch["answer_mask"].long()}
    assert heads_loss(model, sft).item() == pytest.approx(heads_loss(model, batch).item())
    with pytest.raises(DensaError, match="need an `answer_mask`"):
        heads_loss(model, {"input_ids": batch["input_ids"]})
    loss = heads_loss(model, batch)  # gradients reach the heads only
    loss.backward()
    for name, param in model.named_parameters():
        assert (param.grad is not None) == name.startswith("retaining_heads."), name


def test_training_reduces_loss(model: Transformer) -> None:
    history = train_heads(model, [_batch(model.config)], steps=30, lr=3e-2, hidden=16, warmup_frac=0.1)
    assert history[-1]["cis_loss"] < 0.5 * history[0]["cis_loss"]


def test_save_load_roundtrip_and_fingerprint(model: Transformer, tmp_path) -> None:
    attach_heads(model, hidden=8)
    ids = random_tokens(model.config, seq=9)
    model(ids)
    expected = [s.clone() for s in get_heads(model).scores]
    path = save_heads(tmp_path / "heads.safetensors", model)

    fresh = Transformer(model.config).eval()
    fresh.load_state_dict({k: v for k, v in model.state_dict().items() if "retaining_heads" not in k})
    load_heads(fresh, path)
    fresh(ids)
    for a, b in zip(get_heads(fresh).scores, expected, strict=True):
        torch.testing.assert_close(a, b)

    other = Transformer(tiny_model_config(n_kv_heads=4)).eval()
    with pytest.raises(RetainingHeadsError, match="trained for another model.*n_kv_heads=4"):
        load_heads(other, path)
    with pytest.raises(RetainingHeadsError, match="no such retaining-heads file"):
        load_heads(other, tmp_path / "missing.safetensors")


def test_fingerprint_survives_a_new_config_field_at_its_default() -> None:
    """Heads saved before ModelConfig grew a field must still load; a non-default value must not."""
    from densa.models.config import ModelConfig
    from densa.retaining_heads.heads import model_fingerprint

    @dataclasses.dataclass(frozen=True)
    class Grown(ModelConfig):
        new_knob: float = 0.0

    base = tiny_model_config()
    fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(ModelConfig)}
    assert model_fingerprint(Grown(**fields)) == model_fingerprint(base)
    assert model_fingerprint(Grown(**fields, new_knob=0.5)) != model_fingerprint(base)
    assert model_fingerprint(tiny_model_config(n_kv_heads=4)) != model_fingerprint(base)


def test_callback_checks_frozen_backbone_and_saves(model: Transformer, tmp_path) -> None:
    attach_heads(model, hidden=8)
    trainer = SimpleNamespace(engine=SimpleNamespace(module=model), is_main=True, run_dir=tmp_path)
    callback = RetainingHeadsCallback()
    with pytest.raises(DensaError, match="frozen backbone"):
        callback.on_train_start(trainer)
    train_heads(model, [_batch(model.config)], steps=1)  # freezes the backbone
    callback.on_train_start(trainer)
    metrics: dict = {}
    callback.post_step(trainer, 0, metrics)
    assert "cis_loss" in metrics
    callback.on_train_end(trainer, 1)
    assert (tmp_path / "retaining_heads.safetensors").is_file()
