"""bf16 training on CPU through DeepSpeed: it trains, stays close to fp32, and resumes bit-exactly."""

from __future__ import annotations

import torch
from trainer_helpers import SEQ, VOCAB, StopAt, replace, tiny_cfg, weights

from densa.train.run import build_trainer
from densa.train.synthetic import SyntheticDataset

STEPS = 6


def _fit(cfg, *callbacks):
    trainer = build_trainer(cfg, callbacks=list(callbacks), train_data=SyntheticDataset(VOCAB, SEQ))
    return trainer, trainer.fit()


def _bf16(out_dir, **kw):
    return replace(tiny_cfg(out_dir, steps=STEPS, **kw), "parallel", precision="bf16")


def test_bf16_trains_close_to_fp32(tmp_path, ds_world):
    fp32_trainer, fp32 = _fit(tiny_cfg(tmp_path / "fp32", steps=STEPS))
    bf16_trainer, bf16 = _fit(_bf16(tmp_path / "bf16"))
    params = list(bf16_trainer.engine.module.parameters())
    assert all(p.dtype == torch.bfloat16 for p in params)  # the model computes in bf16 ...
    loss32 = [h["loss"] for h in fp32.history]
    loss16 = [h["loss"] for h in bf16.history]
    assert loss16[-1] < loss16[0]  # ... and learns
    # same data, same init: bf16 rounding moves each loss by well under 2% on this model
    assert all(abs(a - b) / a < 0.02 for a, b in zip(loss32, loss16, strict=True)), (loss32, loss16)
    assert loss16 != loss32  # bf16 really ran: its rounding shows in the losses


def test_bf16_resume_is_bit_exact(tmp_path, ds_world):
    ref_trainer, ref = _fit(_bf16(tmp_path / "full"))
    _, first = _fit(_bf16(tmp_path / "split"), StopAt(STEPS // 2 - 1))
    assert first.interrupted
    second_trainer, second = _fit(_bf16(tmp_path / "split"))
    split = first.history + second.history
    assert [h["loss"] for h in split] == [h["loss"] for h in ref.history]
    a, b = weights(ref_trainer), weights(second_trainer)
    assert all(torch.equal(a[k], b[k]) for k in a)
