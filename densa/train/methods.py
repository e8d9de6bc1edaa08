"""The recipe's method sections (`ssd:`, `sparsity:`, `retaining_heads:`, `lora:`, `plugin:`) turned into
trainer parts.

Each method is one `Method` in the `METHODS` registry: when its recipe switch is on it may
- `prepare` the model before the engine (and so the optimizer) exists: ProSparse's ReLU swap; for a
  retaining-head run, attach heads and freeze the backbone; LoRA's adapters (the rest frozen);
- add `callbacks` (given the gradient-accumulation steps): SSD switching, activation-ratio tracking,
  ProSparse's L1 (and FATReLU), the retaining-head callback;
- replace the LM `loss` (the retaining-head loss); at most one enabled method may.

`build_trainer` calls `prepare_model`, `method_callbacks` and `method_loss`, which walk the registry in
order, so `run.py` stays generic and a new method is one `register(Method(...))`. The method packages are
imported lazily: a plain pretraining run never loads them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from densa.config.schema import RunConfig
from densa.errors import DensaError
from densa.models.config import ModelConfig
from densa.train.callbacks import Callback


def trained_model_config(cfg: RunConfig) -> ModelConfig:
    """The architecture the run trains: cfg.model (the loaded model's) with ProSparse's ReLU swap applied.

    With `activation: fatrelu` the threshold becomes `activation_threshold`, so a checkpoint read back (eval,
    init.from_path, export) computes FATReLU natively. Only for reading back: the training model is built
    from cfg.model and gets the threshold from FATReLUCallback's hooks, never from both.
    """
    ps = cfg.sparsity.prosparse
    if ps.enabled:
        threshold = ps.fatrelu_threshold if ps.activation == "fatrelu" else 0.0
        return dataclasses.replace(cfg.model, activation="relu", activation_threshold=threshold)
    return cfg.model


LossFn = Any  # a trainer loss function (densa.train.engine.LossFn)


@dataclass(frozen=True)
class Method:
    """One training method of the recipe and the trainer parts it contributes."""

    name: str
    """The recipe key that turns it on (e.g. `ssd.enabled`), used in messages."""
    enabled: Callable[[RunConfig], bool]
    prepare: Callable[[RunConfig, nn.Module], None] | None = None
    """Change the freshly built (and loaded) model before the optimizer exists."""
    callbacks: Callable[[RunConfig, int], list[Callback]] | None = None
    """Callbacks for the run, given the gradient-accumulation steps."""
    loss: Callable[[RunConfig], LossFn] | None = None
    """The loss that replaces the LM loss."""
    data: Callable[[RunConfig, int], Any] | None = None
    """Training rows that replace data.train (a map-style dataset of sample dicts, given the number of
    samples the run consumes), or None to read data.train."""


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add `method` to the registry (after those already there: order is the callbacks' order)."""
    if method.name in METHODS:
        raise ValueError(f"method {method.name!r} is already registered")
    METHODS[method.name] = method
    return method


def enabled_methods(cfg: RunConfig) -> list[Method]:
    """The registered methods the recipe turns on, in registry order."""
    return [m for m in METHODS.values() if m.enabled(cfg)]


def prepare_model(cfg: RunConfig, model: nn.Module) -> nn.Module:
    """Apply the recipe's methods to a freshly built (and loaded) model, before the optimizer is built."""
    for method in enabled_methods(cfg):
        if method.prepare is not None:
            method.prepare(cfg, model)
    return model


def method_callbacks(cfg: RunConfig, grad_accum: int) -> list[Callback]:
    """Callbacks for the enabled methods; `grad_accum` scales ProSparse's injected L1 gradient."""
    return [
        cb for m in enabled_methods(cfg) if m.callbacks is not None for cb in m.callbacks(cfg, grad_accum)
    ]


def method_loss(cfg: RunConfig) -> LossFn | None:
    """The loss a method replaces the LM loss with (a trainer LossFn), or None."""
    losses = [(m.name, m.loss(cfg)) for m in enabled_methods(cfg) if m.loss is not None]
    if len(losses) > 1:
        names = ", ".join(name for name, _ in losses)
        raise DensaError(f"at most one method may replace the training loss; these all do: {names}")
    return losses[0][1] if losses else None


def method_train_data(cfg: RunConfig, num_samples: int) -> Any | None:
    """The training rows a method generates instead of data.train (the first that does), or None."""
    for m in enabled_methods(cfg):
        rows = m.data(cfg, num_samples) if m.data is not None else None
        if rows is not None:
            return rows
    return None


class FATReLUCallback(Callback):
    """Keep FATReLU hooks (zero pre-activations ≤ threshold) on the model for the whole run, eval included."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self._stack: contextlib.ExitStack | None = None

    @property
    def name(self) -> str:
        return "fatrelu"

    def on_train_start(self, trainer: Any) -> None:
        from densa.sparsity.prosparse import fatrelu_hooks

        self._stack = contextlib.ExitStack()
        self._stack.enter_context(fatrelu_hooks(trainer.model, self.threshold))

    def on_train_end(self, trainer: Any, step: int) -> None:
        if self._stack is not None:
            self._stack.close()
            self._stack = None


# --- the methods ---------------------------------------------------------------------------------------


def _ssd_callbacks(cfg: RunConfig, grad_accum: int) -> list[Callback]:
    from densa.sparse_moe.ssd import SSDCallback

    return [SSDCallback(cfg.ssd, total_steps=cfg.train.steps)]  # cfg.ssd is an SSDConfig already


def _track_callbacks(cfg: RunConfig, grad_accum: int) -> list[Callback]:
    from densa.sparsity.callback import ActivationRatioCallback

    s = cfg.sparsity
    return [ActivationRatioCallback(s.track_interval, threshold=s.track_threshold, cett=s.track_cett)]


def _prosparse_prepare(cfg: RunConfig, model: nn.Module) -> None:
    from densa.sparsity.prosparse import swap_activation

    swap_activation(model, "relu")  # FATReLU is ReLU plus a pre-activation hook (FATReLUCallback)


def _prosparse_callbacks(cfg: RunConfig, grad_accum: int) -> list[Callback]:
    ps, out = cfg.sparsity.prosparse, []
    if ps.activation == "fatrelu":
        out.append(FATReLUCallback(ps.fatrelu_threshold))
    if ps.l1_stages:
        from densa.sparsity.callback import ActivationL1Callback

        # The engine averages the LM loss over micro-batches; the L1 gradient is added per micro-batch.
        out.append(ActivationL1Callback(ps.l1_stages, scale=1.0 / grad_accum))
    return out


def _heads_prepare(cfg: RunConfig, model: nn.Module) -> None:
    from densa.retaining_heads import prepare_for_head_training

    # Freezing must precede the optimizer: it only gets parameters that require grad.
    prepare_for_head_training(model, hidden=cfg.retaining_heads.hidden)


def _heads_callbacks(cfg: RunConfig, grad_accum: int) -> list[Callback]:
    from densa.retaining_heads import RetainingHeadsCallback

    return [RetainingHeadsCallback(out_file=cfg.retaining_heads.out_file)]


def _heads_loss(cfg: RunConfig) -> LossFn:
    from densa.retaining_heads import heads_loss

    rh = cfg.retaining_heads
    # Token-level .bin/.idx rows carry no answer span (their loss_mask is all ones): the tail is the answer.
    answer_tokens = rh.answer_tokens or None
    return functools.partial(heads_loss, alpha=rh.smoothness_alpha, answer_tokens=answer_tokens)


def _heads_data(cfg: RunConfig, num_samples: int) -> Any | None:
    if cfg.retaining_heads.task == "none":
        return None
    from densa.longctx.tasks import TaskDataset, TaskVocab

    vocab, task = TaskVocab(), cfg.retaining_heads.task
    if vocab.size > cfg.model.vocab_size:
        raise DensaError(
            f"retaining_heads.task {task}: the task uses token ids up to {vocab.size - 1};"
            f" the model's vocab_size is {cfg.model.vocab_size}"
        )
    return TaskDataset(task, num_samples, cfg.data.seq_len, seed=cfg.run.seed, vocab=vocab)


def _lora_prepare(cfg: RunConfig, model: nn.Module) -> None:
    from densa.lora.adapters import apply_lora

    apply_lora(model, cfg.lora)  # after init.from_path's weights are loaded, before the optimizer exists


register(Method("ssd.enabled", lambda cfg: cfg.ssd.enabled, callbacks=_ssd_callbacks))
register(
    Method("sparsity.track_interval", lambda cfg: cfg.sparsity.track_interval > 0, callbacks=_track_callbacks)
)
register(
    Method(
        "sparsity.prosparse.enabled",
        lambda cfg: cfg.sparsity.prosparse.enabled,
        prepare=_prosparse_prepare,
        callbacks=_prosparse_callbacks,
    )
)
register(
    Method(
        "retaining_heads.enabled",
        lambda cfg: cfg.retaining_heads.enabled,
        prepare=_heads_prepare,
        callbacks=_heads_callbacks,
        loss=_heads_loss,
        data=_heads_data,
    )
)
register(Method("lora.enabled", lambda cfg: cfg.lora.enabled, prepare=_lora_prepare))


def _plugin_prepare(cfg: RunConfig, model: nn.Module) -> None:
    from densa.plugins.recipe import prepare

    prepare(cfg, model)  # attach the mapper, freeze the model: before the optimizer exists


def _plugin_callbacks(cfg: RunConfig, grad_accum: int) -> list[Callback]:
    from densa.plugins.recipe import PluginCallback

    return [PluginCallback(cfg.plugin.out_file)]


def _plugin_loss(cfg: RunConfig) -> LossFn:
    from densa.plugins.training import plugin_loss

    return plugin_loss


def _plugin_data(cfg: RunConfig, num_samples: int) -> Any:
    from densa.plugins.recipe import rows

    return rows(cfg, num_samples)


register(
    Method(
        "plugin.enabled",
        lambda cfg: cfg.plugin.enabled,
        prepare=_plugin_prepare,
        callbacks=_plugin_callbacks,
        loss=_plugin_loss,
        data=_plugin_data,
    )
)
