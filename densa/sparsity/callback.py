"""Live activation-sparsity tracking and ProSparse's progressive L1 as trainer callbacks.

Both follow `densa.train.callbacks.Callback`; the model is read from `trainer.model` (unwrapped from a
DeepSpeed engine / DDP `.module`). Hooks stay registered for the whole run but only work on armed steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from densa.sparsity.cett import LayerCETT
from densa.sparsity.errors import SparsityError
from densa.sparsity.layers import FFNLayer, ffn_layers
from densa.sparsity.prosparse import sine_staged_lambda
from densa.train.callbacks import Callback


def _model(trainer: Any) -> nn.Module:
    model = getattr(trainer, "model", None)
    if model is None:
        raise SparsityError("trainer has no `model` attribute to attach sparsity hooks to")
    return model


class ActivationRatioCallback(Callback):
    """Every `interval` steps, log the per-layer activation ratio of that step's training forward.

    Active means n_i = |a_i|·‖W_down[:, i]‖ > `threshold` (default 0: non-zero activations, the natural
    sparsity of ReLU models), or — with `cett` set — above the layer threshold whose CETT is `cett`, searched
    on up to `max_tokens` tokens of the step's batch with a `num_candidates` grid (a cheap estimate).
    Adds `sparsity/activation_ratio` (mean) and `sparsity/activation_ratio/layer_{i}` to the step's metrics.
    """

    def __init__(
        self,
        interval: int = 100,
        *,
        threshold: float = 0.0,
        cett: float | None = None,
        max_tokens: int = 256,
        num_candidates: int = 1024,
    ) -> None:
        if interval < 1:
            raise SparsityError(f"interval must be >= 1, got {interval}")
        if cett is not None and not 0.0 <= cett <= 1.0:
            raise SparsityError(f"cett must be in [0, 1], got {cett}")
        self.interval, self.threshold, self.cett = interval, threshold, cett
        self.max_tokens, self.num_candidates = max_tokens, num_candidates
        self._layers: list[FFNLayer] = []
        self._handles: list = []
        self._armed = False
        self._rows: list[list[torch.Tensor]] = []
        self._norms: list[torch.Tensor] = []

    def attach(self, model: nn.Module) -> None:
        self.detach()
        self._layers = ffn_layers(model)
        self._rows = [[] for _ in self._layers]
        for layer in self._layers:
            self._handles.append(layer.hook_act.register_forward_hook(self._hook(layer.index)))

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _hook(self, j: int):
        def hook(_m: nn.Module, _i: tuple, out: torch.Tensor) -> None:
            if not self._armed or sum(r.shape[0] for r in self._rows[j]) >= self.max_tokens:
                return  # also skips gradient-checkpoint recomputation once the budget is full
            a = out.detach().reshape(-1, out.shape[-1])
            need = self.max_tokens - sum(r.shape[0] for r in self._rows[j])
            if a.shape[0] > need:  # strided subsample: spread over the batch, no RNG state touched
                a = a[torch.linspace(0, a.shape[0] - 1, need, device=a.device).long()]
            self._rows[j].append(a.float().cpu())

        return hook

    def on_train_start(self, trainer: Any) -> None:
        self.attach(_model(trainer))

    def pre_step(self, trainer: Any, step: int) -> None:
        # Measure on the steps the trainer logs: it records metrics after step s when (s + 1) is a
        # multiple of logging.log_interval, so arming on (s + 1) % interval lines the two up.
        self._armed = (step + 1) % self.interval == 0
        if self._armed:
            self._rows = [[] for _ in self._layers]

    def post_step(self, trainer: Any, step: int, metrics: dict[str, Any]) -> None:
        if not self._armed:
            return
        self._armed = False
        ratios = self.ratios()
        if not ratios:
            return
        for j, r in enumerate(ratios):
            metrics[f"sparsity/activation_ratio/layer_{j}"] = r
        metrics["sparsity/activation_ratio"] = sum(ratios) / len(ratios)

    def ratios(self) -> list[float]:
        """Activation ratio per layer on the rows recorded since the last arming (empty if none)."""
        out = []
        for layer, rows in zip(self._layers, self._rows):
            if not rows:
                return []
            acts = torch.cat(rows)
            if self.cett is None:
                n = acts.abs() * layer.down_norms().cpu()
                out.append(float((n > self.threshold).float().mean()))
            else:
                c = LayerCETT(acts, layer.down_weight.detach().cpu())
                t, _ = c.search(self.cett, c.candidates(self.num_candidates))
                out.append(1.0 - c.sparsity(t))
        return out

    def on_train_end(self, trainer: Any, step: int) -> None:
        self.detach()


class ActivationL1Callback(Callback):
    """ProSparse's progressive L1 on FFN activations, injected as a gradient so the loop needs no change.

    On every training forward (grad enabled) each hook_act output gets a backward hook adding
    λ(step) · scale · sign(a) / (a.numel() · n_layers): the gradient of λ · scale · mean_l mean|a_l|. Set
    `scale` to 1 / gradient-accumulation steps to match an averaged LM loss; with fp16 dynamic loss scaling
    multiply by the loss scale too (bf16/fp32 need nothing). `stages` as in `sine_staged_lambda`.
    """

    def __init__(self, stages: Sequence[tuple[int, float]], scale: float = 1.0) -> None:
        sine_staged_lambda(0, stages)  # validates
        self.stages, self.scale = list(stages), scale
        self.lam = 0.0
        self._handles: list = []
        self._l1_sum, self._l1_count = 0.0, 0

    def attach(self, model: nn.Module) -> None:
        self.detach()
        layers = ffn_layers(model)
        n_layers = len(layers)

        def hook(_m: nn.Module, _i: tuple, out: torch.Tensor) -> None:
            if not (torch.is_grad_enabled() and out.requires_grad):
                return
            self._l1_sum += float(out.detach().abs().float().mean())
            self._l1_count += 1
            if self.lam > 0:
                coef = self.lam * self.scale / (out.numel() * n_layers)
                sign = out.detach().sign()
                out.register_hook(lambda g, sign=sign, coef=coef: g + coef * sign.to(g.dtype))

        self._handles = [layer.hook_act.register_forward_hook(hook) for layer in layers]

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def on_train_start(self, trainer: Any) -> None:
        self.attach(_model(trainer))

    def pre_step(self, trainer: Any, step: int) -> None:
        self.lam = sine_staged_lambda(step, self.stages)
        self._l1_sum, self._l1_count = 0.0, 0

    def post_step(self, trainer: Any, step: int, metrics: dict[str, Any]) -> None:
        metrics["sparsity/l1_lambda"] = self.lam
        if self._l1_count:
            metrics["sparsity/l1"] = self._l1_sum / self._l1_count

    def on_train_end(self, trainer: Any, step: int) -> None:
        self.detach()
