"""The recipe's method sections, trained through `build_trainer`: SSD switching, sparsity tracking,
ProSparse, retaining heads (frozen backbone, heads file)."""

from __future__ import annotations

import json

import torch
from trainer_helpers import SEQ, VOCAB, replace, tiny_cfg, weights

from densa.config.schema import ProSparseSection, SparsitySection
from densa.models.checkpoint_io import save_transformer
from densa.models.transformer import Transformer
from densa.retaining_heads import load_heads
from densa.retaining_heads.heads import HEADS_ATTR
from densa.train.callbacks import Callback
from densa.train.run import build_trainer, export_final
from densa.train.synthetic import SyntheticDataset


def logged(run_dir) -> dict[int, dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r for r in map(json.loads, lines) if "train/loss" in r}


def test_ssd_switches_at_explicit_steps(tmp_path, ds_world):
    cfg = replace(
        tiny_cfg(tmp_path, steps=6),
        "ssd",
        enabled=True,
        num_experts=4,
        top_k=2,
        interval=0,
        switch_steps=(2, 4),
        sparse_steps=0,
        final_dense_fraction=0.0,
    )
    trainer = build_trainer(cfg, train_data=SyntheticDataset(VOCAB, SEQ))
    result = trainer.fit()
    records = logged(tmp_path)
    # A switch decided after completed step n applies from step n + 1 on; the record of step n shows it.
    assert [records[s]["ssd/sparse"] for s in range(1, 7)] == [0.0, 1.0, 1.0, 0.0, 0.0, 0.0]
    assert "ssd/load_cv" in records[3]
    events = [(h["step"], h["event"]) for h in trainer.callbacks.callbacks[0].history]
    assert (2, "to_sparse") in events and (4, "to_dense") in events
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in result.history)


def test_sparsity_tracking_logs_activation_ratio(tmp_path, ds_world):
    cfg = tiny_cfg(tmp_path, steps=4, sparsity=SparsitySection(track_interval=2))
    cfg = replace(cfg, "model", activation="relu")
    cfg = replace(cfg, "logging", log_interval=2)  # equal intervals: every measurement must be logged
    build_trainer(cfg, train_data=SyntheticDataset(VOCAB, SEQ)).fit()
    records = logged(tmp_path)
    tracked = [s for s, r in records.items() if "sparsity/activation_ratio" in r]
    assert tracked == [2, 4]  # logged after 0-based steps 1 and 3
    r = records[2]
    layers = [r[f"sparsity/activation_ratio/layer_{i}"] for i in range(cfg.model.n_layers)]
    assert 0.0 < r["sparsity/activation_ratio"] < 1.0  # ReLU: roughly half the neurons fire
    assert abs(r["sparsity/activation_ratio"] - sum(layers) / len(layers)) < 1e-9


def test_prosparse_swaps_to_relu_applies_l1_and_exports_relu(tmp_path, ds_world):
    prosparse = ProSparseSection(enabled=True, l1_stages=((2, 0.5), (4, 1.0)))
    cfg = tiny_cfg(tmp_path, steps=4, sparsity=SparsitySection(prosparse=prosparse))
    cfg = replace(cfg, "export", hf_dir=str(tmp_path / "hf"))
    trainer = build_trainer(cfg, train_data=SyntheticDataset(VOCAB, SEQ))
    assert all(layer.ffn.activation == "relu" for layer in trainer.model.layers)
    trainer.fit()
    records = logged(tmp_path)
    # Quarter-sine stages: λ(0) = 0, λ(2) = 0.5 (end of stage 1), λ(3) = 0.5 + 0.5·sin(π/4).
    lams = [records[s]["sparsity/l1_lambda"] for s in range(1, 5)]
    expected = [0.0, 0.5 * 2**-0.5, 0.5, 0.5 + 0.5 * 2**-0.5]
    assert all(abs(a - b) < 1e-12 for a, b in zip(lams, expected, strict=True)), lams
    assert records[2]["sparsity/l1"] > 0
    export_final(trainer)
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["hidden_act"] == "relu"


class AnswerMasked:
    """SyntheticDataset whose second half of each sample is the "answer" (SFT loss_mask)."""

    def __init__(self) -> None:
        self.base = SyntheticDataset(VOCAB, SEQ)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict:
        s = dict(self.base[i])
        s["loss_mask"] = torch.cat([torch.zeros(SEQ // 2), torch.ones(SEQ - SEQ // 2)])
        return s


class Snapshot(Callback):
    def on_train_start(self, trainer) -> None:
        self.start = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def test_retaining_heads_train_only_heads_and_write_file(tmp_path, ds_world):
    base = tiny_cfg(tmp_path / "run", steps=3)
    torch.manual_seed(0)
    save_transformer(tmp_path / "backbone", Transformer(base.model))
    cfg = replace(base, "init", from_path=str(tmp_path / "backbone"))
    cfg = replace(cfg, "retaining_heads", enabled=True, hidden=16, out_file="heads.safetensors")
    snap = Snapshot()
    trainer = build_trainer(cfg, callbacks=[snap], train_data=AnswerMasked())
    trainer.fit()
    after = weights(trainer)
    heads = [k for k in after if k.startswith(HEADS_ATTR + ".")]
    assert heads and len(heads) < len(after)
    for name, value in after.items():
        if name in heads:
            assert not torch.equal(value, snap.start[name]), name
        else:
            assert torch.equal(value, snap.start[name]), name  # backbone bit-identical
    records = logged(tmp_path / "run")
    assert records[3]["cis_loss"] > 0
    fresh = Transformer(base.model)
    loaded = load_heads(fresh, tmp_path / "run" / "heads.safetensors")
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, after[f"{HEADS_ATTR}.{key}"]), key


def test_method_registry_order_and_lookup(tmp_path, monkeypatch):
    from densa.config.schema import RetainingHeadsSection, SSDConfig
    from densa.errors import DensaError
    from densa.train import methods

    assert list(methods.METHODS) == [
        "ssd.enabled",
        "sparsity.track_interval",
        "sparsity.prosparse.enabled",
        "retaining_heads.enabled",
        "lora.enabled",
        "plugin.enabled",
    ]
    prosparse = ProSparseSection(
        enabled=True, activation="fatrelu", fatrelu_threshold=0.1, l1_stages=((2, 1.0),)
    )
    cfg = tiny_cfg(tmp_path, sparsity=SparsitySection(track_interval=2, prosparse=prosparse))
    cfg = replace(cfg, "ssd", enabled=True, num_experts=4, top_k=2)
    names = [cb.name for cb in methods.method_callbacks(cfg, grad_accum=2)]
    assert names == ["ssd", "ActivationRatioCallback", "fatrelu", "ActivationL1Callback"]
    assert (
        methods.method_callbacks(tiny_cfg(tmp_path), 1) == []
        and methods.method_loss(tiny_cfg(tmp_path)) is None
    )
    assert isinstance(cfg.ssd, SSDConfig)  # the section is the callback's config, passed as is

    # A registered method plugs in without touching run.py; two losses at once are refused.
    extra = methods.Method("extra.enabled", lambda c: True, loss=lambda c: "extra-loss")
    monkeypatch.setitem(methods.METHODS, extra.name, extra)
    assert methods.method_loss(tiny_cfg(tmp_path)) == "extra-loss"
    heads_cfg = tiny_cfg(tmp_path, retaining_heads=RetainingHeadsSection(enabled=True))
    try:
        methods.method_loss(heads_cfg)
    except DensaError as err:
        assert str(err) == (
            "at most one method may replace the training loss; these all do:"
            " retaining_heads.enabled, extra.enabled"
        )
    else:
        raise AssertionError("two losses were accepted")


def test_retaining_heads_section_defaults_match_the_library():
    # The section cannot import densa.retaining_heads (torch) at schema level; this keeps the two in step.
    import inspect

    from densa.config.schema import RetainingHeadsSection
    from densa.retaining_heads.loss import SMOOTHNESS_ALPHA
    from densa.retaining_heads.training import RetainingHeadsCallback, prepare_for_head_training

    section = RetainingHeadsSection()
    assert section.hidden == inspect.signature(prepare_for_head_training).parameters["hidden"].default
    assert section.smoothness_alpha == SMOOTHNESS_ALPHA
    assert section.out_file == inspect.signature(RetainingHeadsCallback).parameters["out_file"].default
