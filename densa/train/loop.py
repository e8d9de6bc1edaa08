"""The training loop: steps, skip-on-NaN, signals, checkpoints, logging, eval; everything else is a callback.

`Trainer.fit()` resumes from the newest complete checkpoint (checkpoint.resume), then for each step:
`pre_step` hooks → `engine.train_step` (all micro-batches, one optimizer update or a skip) → counters →
`post_step` hooks (may add metrics) → log / eval / checkpoint at their intervals. A step whose loss is
non-finite on any rank is skipped (no update, grads dropped) but still consumes its data and LR step;
`train.max_bad_steps` in a row stop the run with `TrainingDiverged`. SIGTERM/SIGINT finish the current
step, agree across ranks during the next one (its all-reduce), save a checkpoint and return
normally (`TrainResult.interrupted`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from densa.config.schema import RunConfig
from densa.errors import DataError, DensaError
from densa.train import engine as eng
from densa.train.callbacks import Callback, CallbackList
from densa.train.checkpoint import CheckpointManager, TrainState, clean_leftovers, resume_candidates
from densa.train.eval import summarize
from densa.train.failures import StopSignal, Watchdog, watchdog_timeout_s
from densa.train.metrics import MetricsLogger, Throughput

BatchSource = Callable[[int], Iterator[list[dict]]]


class TrainingDiverged(DensaError):
    """Too many consecutive steps had a non-finite loss."""


@dataclass
class TrainResult:
    state: TrainState
    interrupted: bool = False
    """A signal stopped the run early (a checkpoint was saved)."""
    last_checkpoint: Path | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    """Per step: step, loss, lr, grad_norm, applied (all steps of this process, for tests and tools)."""


class Trainer:
    """Runs `cfg.train.steps` optimizer steps of `engine` over `train_data`."""

    def __init__(
        self,
        cfg: RunConfig,
        engine: eng.Engine,
        train_data: BatchSource,
        *,
        valid_data: Callable[[], list[dict]] | None = None,
        callbacks: Iterable[Callback] = (),
        loss_fn: eng.LossFn = eng.lm_loss,
        recipe_yaml: str = "",
        num_params: int | None = None,
    ) -> None:
        self.cfg, self.engine = cfg, engine
        self.train_data, self.valid_data, self.loss_fn = train_data, valid_data, loss_fn
        self.run_dir = Path(cfg.run.out_dir)
        self.is_main = engine.world.rank == 0
        self.callbacks = CallbackList(list(callbacks))
        self.state = TrainState()
        self.recipe_yaml = recipe_yaml
        self.checkpoints = CheckpointManager(self.run_dir, cfg.checkpoint.keep_last, engine)
        self.num_params = num_params or sum(p.numel() for p in engine.module.parameters()) * cfg.parallel.tp
        self.metrics: MetricsLogger | None = None
        self.last_checkpoint: Path | None = None
        self.error: BaseException | None = None
        """What `fit` raised (set before `on_error` / `on_train_end` run), else None."""
        self._stop_requested = False

    @property
    def model(self):
        """The trained module (unwrapped from DeepSpeed; TP-sharded when parallel.tp > 1)."""
        return self.engine.module

    def request_stop(self) -> None:
        """After the current step: save a checkpoint and return from `fit`.

        Call it on every rank (a deterministic callback does); a signal instead reaches all ranks
        through the next step's all-reduce."""
        self._stop_requested = True

    # ------------------------------------------------------------------------------------ resume

    def maybe_resume(self) -> Path | None:
        """Load the checkpoint named by checkpoint.resume (auto: newest complete one that reads back; a
        damaged one is skipped with a warning), if any."""
        if self.is_main:
            clean_leftovers(self.run_dir)
            paths = resume_candidates(self.cfg.checkpoint.resume, self.run_dir)
        paths = eng.broadcast_object(paths if self.is_main else None)
        loaded = self.checkpoints.load_first(paths, fallback=self.cfg.checkpoint.resume == "auto")
        if loaded is None:
            return None
        path, self.state, callback_state = loaded
        self.callbacks.load_state_dict(callback_state)
        self.callbacks.call("on_checkpoint_load", self, self.state.step, Path(path))
        self.last_checkpoint = Path(path)
        return Path(path)

    def save_checkpoint(self) -> Path:
        step = self.state.step
        path = self.checkpoints.save(
            self.state,
            self.callbacks.state_dict(),
            self.recipe_yaml,
            before_commit=lambda tmp: self.callbacks.call("on_checkpoint_save", self, step, tmp),
        )
        self.last_checkpoint = path
        return path

    # ------------------------------------------------------------------------------------ eval

    def evaluate(self) -> dict[str, float]:
        if self.valid_data is None:
            return {}
        total, tokens = self.engine.eval_losses(self.valid_data())
        metrics = summarize(total, tokens)
        self.callbacks.call("on_eval", self, self.state.step, metrics)
        if self.metrics is not None:
            self.metrics.log(self.state.step, metrics)
            self.metrics.message(
                f"step {self.state.step}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())
            )
        return metrics

    # ------------------------------------------------------------------------------------ fit

    def fit(self) -> TrainResult:
        resumed = self.maybe_resume()
        cfg, engine, state = self.cfg, self.engine, self.state
        history: list[dict[str, Any]] = []
        log = cfg.logging
        self.metrics = MetricsLogger(
            self.run_dir,
            is_main=self.is_main,
            tensorboard=log.tensorboard,
            progress=log.progress,
            total_steps=cfg.train.steps,
            start_step=state.step,
            resume_step=state.step if resumed is not None else None,
            wandb=log.wandb,
            run_name=cfg.run.name,
            config=yaml.safe_load(self.recipe_yaml) if self.recipe_yaml and log.wandb.project else None,
        )
        if resumed is not None:
            self.metrics.message(f"resumed from {resumed} at step {state.step}")
        signals = StopSignal()
        watchdog = Watchdog(watchdog_timeout_s(), engine.world.rank)
        speed = Throughput(
            self.num_params,
            engine.batch.global_samples * cfg.data.seq_len,
            eng.peak_flops(),
            engine.world.world_size,
        )
        interrupted = False
        try:
            self.callbacks.call("on_train_start", self)
            batches = self.train_data(state.consumed_samples)
            saved_at = state.step if resumed is not None else -1
            while state.step < cfg.train.steps:
                step = state.step
                self.callbacks.call("pre_step", self, step)
                try:
                    micro = next(batches)
                except StopIteration:
                    raise DataError(
                        f"training data ran out at step {step} ({state.consumed_samples} samples consumed)"
                    ) from None
                out = engine.train_step(micro, self.loss_fn, stop=signals.requested)
                state.step += 1
                state.consumed_samples += engine.batch.global_samples
                if out.nonfinite:
                    state.skipped_steps += 1
                    state.consecutive_bad += 1
                else:
                    state.consecutive_bad = 0
                speed.add_step()
                watchdog.beat()
                metrics: dict[str, Any] = {
                    "train/loss": out.loss,
                    "train/lr": out.lr,
                    "train/grad_norm": out.grad_norm,
                    "train/skipped_steps": state.skipped_steps,
                    "train/consumed_samples": state.consumed_samples,
                }
                self.callbacks.call("post_step", self, step, metrics)
                history.append(
                    {
                        "step": step,
                        "loss": out.loss,
                        "lr": out.lr,
                        "grad_norm": out.grad_norm,
                        "applied": out.applied,
                    }
                )
                done = state.step >= cfg.train.steps
                if out.nonfinite:
                    self.metrics.message(
                        f"step {step}: non-finite loss, update skipped"
                        f" ({state.consecutive_bad} in a row, {state.skipped_steps} in total)"
                    )
                if state.step % log.log_interval == 0 or done or out.nonfinite:
                    metrics.update(speed.measure())
                    metrics.update(eng.memory_stats())
                    self.metrics.log(state.step, metrics)
                self.metrics.progress(state.step, out.loss)
                if state.consecutive_bad >= max(1, cfg.train.max_bad_steps):
                    raise TrainingDiverged(
                        f"stopping at step {state.step}: {state.consecutive_bad} consecutive steps had a"
                        f" non-finite loss (train.max_bad_steps={cfg.train.max_bad_steps}); the last"
                        f" checkpoint is {self.last_checkpoint or 'none'}. Lower optim.lr, check the data,"
                        " or use fp32/bf16 instead of fp16."
                    )
                if cfg.eval.interval and state.step % cfg.eval.interval == 0 and not done:
                    self.evaluate()
                    watchdog.beat()
                stop = out.stop or self._stop_requested
                if stop or done or state.step % cfg.checkpoint.interval == 0:
                    self.save_checkpoint()
                    saved_at = state.step
                    watchdog.beat()
                if stop:
                    interrupted = True
                    self.metrics.message(f"stopped at step {state.step} on request; checkpoint saved")
                    break
            if not interrupted:
                if saved_at != state.step:  # e.g. resumed from a checkpoint already at train.steps
                    self.save_checkpoint()
                self.evaluate()
        except BaseException as exc:
            self.error = exc
            for name, err in self.callbacks.call_all("on_error", self, exc):
                self.metrics.message(f"callback {name}: on_error raised {type(err).__name__}: {err}")
            raise
        finally:
            try:
                self._train_end()
            finally:
                watchdog.close()
                signals.close()
                self.metrics.close()
        return TrainResult(state, interrupted, self.last_checkpoint, history)

    def _train_end(self) -> None:
        """`on_train_end` on every callback; a failure there is raised only when the run itself succeeded
        (otherwise it would hide the run's own exception, which is already on its way)."""
        failed = self.callbacks.call_all("on_train_end", self, self.state.step)
        for name, err in failed:
            self.metrics.message(f"callback {name}: on_train_end raised {type(err).__name__}: {err}")
        if failed and self.error is None:
            raise failed[0][1]
