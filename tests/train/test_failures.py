"""Failure behaviour in one process: NaN steps are skipped and counted, K in a row stop the run, a bad run
dir fails before training starts."""

from __future__ import annotations

import pytest
import torch
from trainer_helpers import SEQ, VOCAB, replace, tiny_cfg

from densa.train import engine as eng
from densa.train.callbacks import Callback
from densa.train.failures import RunDirError
from densa.train.loop import TrainingDiverged
from densa.train.run import build_trainer
from densa.train.synthetic import SyntheticDataset


class PoisonSteps(Callback):
    """Makes the loss NaN on the given steps and snapshots weights and optimizer state around each step."""

    def __init__(self, bad: set[int]) -> None:
        self.bad, self.current = bad, -1
        self.before: dict[int, dict] = {}
        self.after: dict[int, dict] = {}

    def loss_fn(self, model, batch):
        loss = eng.lm_loss(model, batch)
        return loss * float("nan") if self.current in self.bad else loss

    def _snapshot(self, trainer) -> dict:
        params = {k: v.detach().clone() for k, v in trainer.engine.module.named_parameters()}
        opt = trainer.engine.torch_optimizer.state_dict()["state"]
        moments = {i: s["exp_avg"].clone() for i, s in opt.items() if "exp_avg" in s}
        return {"params": params, "moments": moments}

    def pre_step(self, trainer, step) -> None:
        self.current = step
        self.before[step] = self._snapshot(trainer)

    def post_step(self, trainer, step, metrics) -> None:
        self.after[step] = self._snapshot(trainer)


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("zero_stage", [0, 1])
def test_nonfinite_step_is_skipped_and_counted(tmp_path, ds_world, zero_stage):
    cfg = replace(tiny_cfg(tmp_path, steps=4), "parallel", zero_stage=zero_stage)
    poison = PoisonSteps({1})
    trainer = build_trainer(
        cfg, callbacks=[poison], train_data=SyntheticDataset(VOCAB, SEQ), loss_fn=poison.loss_fn
    )
    result = trainer.fit()
    assert [h["applied"] for h in result.history] == [True, False, True, True]
    assert result.state.skipped_steps == 1 and result.state.consecutive_bad == 0
    assert _same(poison.before[1]["params"], poison.after[1]["params"])  # no update
    if zero_stage == 0:  # ZeRO keeps moments in flat partitions; params unchanged is the check there
        assert _same(poison.before[1]["moments"], poison.after[1]["moments"])
    assert not _same(poison.before[2]["params"], poison.after[2]["params"])  # training goes on
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in trainer.engine.module.parameters())
    assert all(torch.isfinite(v).all() for v in poison.after[3]["params"].values())


def test_consecutive_nonfinite_steps_stop_the_run(tmp_path, ds_world):
    cfg = tiny_cfg(tmp_path, steps=20)  # train.max_bad_steps = 3
    poison = PoisonSteps(set(range(2, 20)))
    trainer = build_trainer(
        cfg, callbacks=[poison], train_data=SyntheticDataset(VOCAB, SEQ), loss_fn=poison.loss_fn
    )
    with pytest.raises(
        TrainingDiverged, match=r"stopping at step 5: 3 consecutive steps had a non-finite loss"
    ):
        trainer.fit()
    assert trainer.state.skipped_steps == 3


def _no_engine(*args, **kwargs):
    raise AssertionError("training started although the run dir is unusable")


def test_unwritable_out_dir_fails_before_training(tmp_path, monkeypatch):
    monkeypatch.setattr(eng, "init_distributed", _no_engine)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(RunDirError, match=r"run.out_dir .*a_file/run is not writable"):
        build_trainer(tiny_cfg(blocker / "run"), train_data=SyntheticDataset(VOCAB, SEQ))


def test_too_little_disk_fails_before_training(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    monkeypatch.setattr(eng, "init_distributed", _no_engine)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(RunDirError, match=r"GiB free, but keeping 2 checkpoints .* needs about"):
        build_trainer(tiny_cfg(tmp_path / "run"), train_data=SyntheticDataset(VOCAB, SEQ))
