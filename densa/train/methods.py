"""The recipe's method sections (`ssd:`, `sparsity:`, `retaining_heads:`) turned into trainer parts.

`build_trainer` calls these three; everything method-specific lives here so `run.py` stays generic:

- `prepare_model(cfg, model)`: changes the model before the engine (and so the optimizer) exists:
  ProSparse's ReLU swap; for a retaining-head run, attach heads and freeze the backbone;
- `method_callbacks(cfg, grad_accum)`: SSD switching, activation-ratio tracking, ProSparse's L1 (and
  FATReLU), the retaining-head callback, in that order;
- `method_loss(cfg)`: the retaining-head loss, or None for the LM loss.

The method packages are imported lazily: a plain pretraining run never loads them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from typing import Any

from torch import nn

from densa.config.schema import RunConfig
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


def prepare_model(cfg: RunConfig, model: nn.Module) -> nn.Module:
    """Apply the recipe's methods to a freshly built (and loaded) model, before the optimizer is built."""
    if cfg.sparsity.prosparse.enabled:
        from densa.sparsity.prosparse import swap_activation

        swap_activation(model, "relu")  # FATReLU is ReLU plus a pre-activation hook (FATReLUCallback)
    if cfg.retaining_heads.enabled:
        from densa.retaining_heads import prepare_for_head_training

        # Freezing must precede the optimizer: it only gets parameters that require grad.
        prepare_for_head_training(model, hidden=cfg.retaining_heads.hidden)
    return model


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


def method_callbacks(cfg: RunConfig, grad_accum: int) -> list[Callback]:
    """Callbacks for the enabled methods; `grad_accum` scales ProSparse's injected L1 gradient."""
    out: list[Callback] = []
    if cfg.ssd.enabled:
        from densa.sparse_moe.ssd import SSDCallback, SSDConfig

        out.append(SSDCallback(SSDConfig(**dataclasses.asdict(cfg.ssd)), total_steps=cfg.train.steps))
    s = cfg.sparsity
    if s.track_interval > 0:
        from densa.sparsity.callback import ActivationRatioCallback

        out.append(ActivationRatioCallback(s.track_interval, threshold=s.track_threshold, cett=s.track_cett))
    ps = s.prosparse
    if ps.enabled:
        if ps.activation == "fatrelu":
            out.append(FATReLUCallback(ps.fatrelu_threshold))
        if ps.l1_stages:
            from densa.sparsity.callback import ActivationL1Callback

            # The engine averages the LM loss over micro-batches; the L1 gradient is added per micro-batch.
            out.append(ActivationL1Callback(ps.l1_stages, scale=1.0 / grad_accum))
    if cfg.retaining_heads.enabled:
        from densa.retaining_heads import RetainingHeadsCallback

        out.append(RetainingHeadsCallback(out_file=cfg.retaining_heads.out_file))
    return out


def method_loss(cfg: RunConfig) -> Any | None:
    """The loss a method replaces the LM loss with (a trainer LossFn), or None."""
    if cfg.retaining_heads.enabled:
        from densa.retaining_heads import heads_loss

        return functools.partial(heads_loss, alpha=cfg.retaining_heads.smoothness_alpha)
    return None
