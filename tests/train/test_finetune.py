"""Finetuning: start from an HF folder, freeze by glob, SFT loss masks, export to HF at the end."""

from __future__ import annotations

import torch
from trainer_helpers import SEQ, VOCAB, replace, tiny_cfg, weights

from densa.models.hf.exporter import save_hf
from densa.models.hf.importer import load_hf_state
from densa.models.transformer import Transformer
from densa.train.callbacks import Callback
from densa.train.run import build_trainer, export_final
from densa.train.synthetic import SyntheticDataset


class Snapshot(Callback):
    def on_train_start(self, trainer) -> None:
        self.start = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}


def test_freeze_keeps_params_and_grads_untouched(tmp_path, ds_world):
    cfg = replace(tiny_cfg(tmp_path, steps=3), "init", freeze=("embed_tokens.*", "layers.0.attn.*"))
    snap = Snapshot()
    trainer = build_trainer(cfg, callbacks=[snap], train_data=SyntheticDataset(VOCAB, SEQ))
    trainer.fit()
    frozen = [n for n in snap.start if n.startswith(("embed_tokens.", "layers.0.attn."))]
    assert frozen and len(frozen) < len(snap.start)
    for name, param in trainer.model.named_parameters():
        if name in frozen:
            assert not param.requires_grad and param.grad is None
            assert torch.equal(param, snap.start[name]), name
        else:
            assert not torch.equal(param, snap.start[name]), name


class MaskedNoise:
    """SyntheticDataset whose second half of every sample is masked out; `noise` scrambles those labels."""

    def __init__(self, noise: bool) -> None:
        self.base, self.noise = SyntheticDataset(VOCAB, SEQ), noise

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict:
        s = dict(self.base[i])
        s["loss_mask"] = torch.cat([torch.ones(SEQ // 2), torch.zeros(SEQ - SEQ // 2)])
        if self.noise:
            g = torch.Generator().manual_seed(i)
            s["labels"] = torch.where(
                s["loss_mask"] > 0, s["labels"], torch.randint(VOCAB, (SEQ,), generator=g)
            )
        return s


def test_sft_loss_mask_is_respected(tmp_path, ds_world):
    runs = []
    for noise in (False, True):
        trainer = build_trainer(tiny_cfg(tmp_path / str(noise), steps=3), train_data=MaskedNoise(noise))
        runs.append((trainer.fit(), weights(trainer)))
    (clean, w_clean), (noisy, w_noisy) = runs
    assert [h["loss"] for h in clean.history] == [h["loss"] for h in noisy.history]
    assert all(torch.equal(w_clean[k], w_noisy[k]) for k in w_clean)


def test_init_from_hf_folder_and_export(tmp_path, ds_world):
    cfg = tiny_cfg(tmp_path / "run", steps=2)
    torch.manual_seed(42)
    source = Transformer(cfg.model)
    save_hf(tmp_path / "hf_in", cfg.model, source.state_dict())
    cfg = replace(
        replace(cfg, "init", from_path=str(tmp_path / "hf_in")), "export", hf_dir=str(tmp_path / "hf_out")
    )
    snap = Snapshot()
    trainer = build_trainer(cfg, callbacks=[snap], train_data=SyntheticDataset(VOCAB, SEQ))
    assert all(
        torch.equal(snap_v, source.state_dict()[k]) for k, snap_v in trainer.model.state_dict().items()
    )
    trainer.fit()
    export_final(trainer)
    _, exported = load_hf_state(tmp_path / "hf_out")
    trained = weights(trainer)
    assert exported.keys() == trained.keys()
    assert all(torch.equal(exported[k], trained[k]) for k in trained)
    assert not torch.equal(
        exported["layers.0.ffn.down_proj.weight"], source.state_dict()["layers.0.ffn.down_proj.weight"]
    )
