"""The hook surface around the training loop (OLMo-core style).

Everything that is not "run a step" plugs in here instead of editing the loop: metric logging, eval,
SSD dense/sparse switching, sparsity tracking, retaining-head schedules. Every hook has a no-op default,
so a callback overrides only what it needs. Hooks run on every rank (a callback that writes files should
check `trainer.is_main`), in the order the callbacks were given.

Protocol:
- `on_train_start(trainer)`   after the model, engine and data exist and any checkpoint was loaded;
- `pre_step(trainer, step)`   before step `step` (0-based) runs; may change the model (e.g. switch modes);
- `post_step(trainer, step, metrics)` after the step; `metrics` is a dict the callback may add keys to
  (they are logged with the step's loss, LR, grad norm, throughput);
- `on_eval(trainer, step, metrics)`   after a validation pass; may add metrics likewise;
- `state_dict()` / `load_state_dict(state)`: state that must survive resume, saved in every checkpoint
  under the callback's `name` (`on_checkpoint_save` / `on_checkpoint_load` are notified around that);
- `on_error(trainer, exc)`    when the run fails: `exc` is what `fit` is about to raise (a diverged loss, a
  data error, a callback's exception, KeyboardInterrupt); an exception raised here is reported, not raised;
- `on_train_end(trainer, step)` exactly once, in a `finally`: after the last step, after a signal-triggered
  stop and after a failure (then after `on_error`; `trainer.error` holds the exception, so a callback can
  skip writing final outputs). Every callback's `on_train_end` runs even if an earlier one raises.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path

    from densa.train.loop import Trainer


class Callback:
    """Base class: override the hooks you need."""

    @property
    def name(self) -> str:
        """Key of this callback's state in checkpoints (unique per run)."""
        return type(self).__name__

    def on_train_start(self, trainer: Trainer) -> None: ...

    def pre_step(self, trainer: Trainer, step: int) -> None: ...

    def post_step(self, trainer: Trainer, step: int, metrics: dict[str, Any]) -> None: ...

    def on_eval(self, trainer: Trainer, step: int, metrics: dict[str, Any]) -> None: ...

    def on_checkpoint_save(self, trainer: Trainer, step: int, path: Path) -> None: ...

    def on_checkpoint_load(self, trainer: Trainer, step: int, path: Path) -> None: ...

    def on_error(self, trainer: Trainer, exc: BaseException) -> None: ...

    def on_train_end(self, trainer: Trainer, step: int) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class CallbackList:
    """Dispatch each hook to every callback in order; gather and restore their checkpoint state."""

    def __init__(self, callbacks: list[Callback]) -> None:
        names = [cb.name for cb in callbacks]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"callback names must be unique (they key checkpoint state): {dupes}")
        self.callbacks = list(callbacks)

    def __iter__(self):
        return iter(self.callbacks)

    def call(self, hook: str, *args: Any) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(*args)

    def call_all(self, hook: str, *args: Any) -> list[tuple[str, BaseException]]:
        """Run `hook` on every callback even when some raise; return (callback name, exception) pairs.

        For the hooks of a run's end: one callback's failure must not skip another's cleanup."""
        failed: list[tuple[str, BaseException]] = []
        for cb in self.callbacks:
            try:
                getattr(cb, hook)(*args)
            except Exception as err:  # noqa: BLE001 - collected and reported by the caller
                failed.append((cb.name, err))
        return failed

    def state_dict(self) -> dict[str, dict[str, Any]]:
        return {cb.name: cb.state_dict() for cb in self.callbacks}

    def load_state_dict(self, state: dict[str, dict[str, Any]]) -> None:
        for cb in self.callbacks:
            if cb.name in state:
                cb.load_state_dict(state[cb.name])
