"""The end of a run (on_error, on_train_end in finally) and the metric sinks across a resume: metrics.jsonl,
TensorBoard and Weights & Biases keep one point per step."""

from __future__ import annotations

import json
import re

import pytest
from trainer_helpers import SEQ, VOCAB, replace, tiny_cfg

from densa.config.schema import LoggingSection, WandbSection
from densa.errors import DensaError
from densa.train.callbacks import Callback
from densa.train.metrics import truncate_metrics
from densa.train.run import build_trainer
from densa.train.synthetic import SyntheticDataset


class Boom(Callback):
    """Fails before step `step` (0-based) runs."""

    def __init__(self, step: int) -> None:
        self.step = step

    def pre_step(self, trainer, step) -> None:
        if step == self.step:
            raise DensaError(f"boom at {step}")


class Recorder(Callback):
    def __init__(self, fail_end: bool = False, name: str = "rec") -> None:
        self.calls: list[tuple] = []
        self.fail_end, self._name = fail_end, name

    @property
    def name(self) -> str:
        return self._name

    def on_error(self, trainer, exc) -> None:
        self.calls.append(("on_error", str(exc), trainer.error is exc))

    def on_train_end(self, trainer, step) -> None:
        self.calls.append(("on_train_end", step, None if trainer.error is None else str(trainer.error)))
        if self.fail_end:
            raise RuntimeError("cleanup failed")


def _fit(cfg, *callbacks):
    trainer = build_trainer(cfg, callbacks=list(callbacks), train_data=SyntheticDataset(VOCAB, SEQ))
    return trainer, trainer.fit()


def _steps(run_dir) -> list[int]:
    return [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_error_hook_then_train_end_in_finally(tmp_path, ds_world):
    cfg = tiny_cfg(tmp_path / "run", steps=4)
    first, second = Recorder(fail_end=True, name="first"), Recorder(name="second")
    with pytest.raises(DensaError, match="boom at 2"):  # not hidden by first's failing on_train_end
        _fit(cfg, first, Boom(2), second)
    expected = [("on_error", "boom at 2", True), ("on_train_end", 2, "boom at 2")]
    assert first.calls == expected and second.calls == expected  # second ran although first raised


def test_train_end_failure_is_raised_after_a_good_run(tmp_path, ds_world):
    rec = Recorder(fail_end=True)
    with pytest.raises(RuntimeError, match="cleanup failed"):
        _fit(tiny_cfg(tmp_path / "run", steps=2), rec)
    assert rec.calls == [("on_train_end", 2, None)]


def test_truncate_metrics_is_atomic_and_drops_torn_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3, "x": 1}\n{"step": 4}\n{"ste')
    assert truncate_metrics(path, 2) == 3
    assert path.read_text() == '{"step": 1}\n{"step": 2}\n'
    assert not (tmp_path / "metrics.jsonl.tmp").exists()
    assert truncate_metrics(tmp_path / "missing.jsonl", 2) == 0


def test_resume_keeps_one_point_per_step(tmp_path, ds_world, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    pytest.importorskip("wandb")
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    logged: list[tuple[int, float]] = []
    real_init = wandb.init

    def init(**kwargs):
        run = real_init(**kwargs)
        real_log = run.log
        run.log = lambda data, step=None: (
            logged.append((step, data["train/loss"])),
            real_log(data, step=step),
        )
        return run

    monkeypatch.setattr(wandb, "init", init)
    run_dir = tmp_path / "run"
    logging = LoggingSection(
        log_interval=1,
        tensorboard=True,
        progress=False,
        wandb=WandbSection(project="densa-test", mode="offline"),
    )
    cfg = replace(tiny_cfg(run_dir, steps=6, logging=logging), "checkpoint", interval=3)
    with pytest.raises(DensaError, match="boom at 4"):  # steps 1..4 logged, checkpoint at 3
        _fit(cfg, Boom(4))
    assert _steps(run_dir) == [1, 2, 3, 4]
    trainer, result = _fit(cfg)  # resumes at 3: the record of step 4 is dropped, then logged again
    assert result.state.step == 6
    assert _steps(run_dir) == [1, 2, 3, 4, 5, 6]

    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3, 4, 5, 6]

    run_id = (run_dir / "wandb_run_id").read_text().strip()
    runs = sorted(p.name for p in (run_dir / "wandb").glob("offline-run-*"))
    # one W&B run, continued; a resume within the same second gets W&B's "-1" folder suffix
    assert len(runs) in (1, 2) and all(
        re.fullmatch(rf"offline-run-\d{{8}}_\d{{6}}-{run_id}(-\d+)?", n) for n in runs
    )
    assert [step for step, _ in logged] == [1, 2, 3, 4, 4, 5, 6]  # W&B itself ignores the repeated 4
    assert logged[3][1] == logged[4][1]  # ... which holds the same value: resume is exact


def test_missing_wandb_is_a_clear_error(tmp_path, ds_world, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    logging = LoggingSection(
        tensorboard=False, progress=False, wandb=WandbSection(project="p", mode="offline")
    )
    with pytest.raises(DensaError) as err:
        _fit(tiny_cfg(tmp_path / "run", steps=2, logging=logging))
    assert str(err.value) == (
        "logging.wandb.project is set but wandb is not installed: pip install wandb"
        " (or remove logging.wandb.project)"
    )
