"""ProSparse building blocks: ReLU swap, progressive L1 on activations, FATReLU threshold shifting.

FATReLU(x) = x if x > T else 0. With T ≥ 0 it equals ReLU applied after zeroing pre-activations ≤ T, so
during training it is installed as a `hook_pre_act` forward hook on a ReLU model. The trained architecture
records it as `ModelConfig.activation_threshold` (densa.train.methods.trained_model_config), so checkpoints
read back, `densa eval` and HF exports apply the same function without the hook.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from densa.models.activations import fatrelu, get_activation
from densa.models.config import ModelConfig
from densa.sparsity.errors import SparsityError, UnsupportedModelError
from densa.sparsity.layers import ffn_layers, unwrap


def relu_config(config: ModelConfig, activation: str = "relu") -> ModelConfig:
    """The same architecture with a plain ReLU-family activation (gating kept: SwiGLU → ReGLU; no FATReLU)."""
    return dataclasses.replace(config, activation=activation, activation_threshold=0.0)


def swap_activation(model: nn.Module, activation: str = "relu") -> nn.Module:
    """Switch every FFN (and `model.config`) to `activation` in place (ProSparse step 1).

    Weights are untouched."""
    fn = get_activation(activation)
    for layer in ffn_layers(model):
        layer.module.act_fn = fn
        layer.module.activation = activation
        layer.module.activation_threshold = 0.0
    inner = unwrap(model)
    if isinstance(getattr(inner, "config", None), ModelConfig):
        inner.config = relu_config(inner.config, activation)
    return model


@contextlib.contextmanager
def fatrelu_hooks(model: nn.Module, threshold: float) -> Iterator[None]:
    """Within the block, the model's ReLU FFNs act as FATReLU with `threshold` (ProSparse step 3)."""
    if threshold < 0:
        raise SparsityError(f"FATReLU threshold must be >= 0, got {threshold}")
    layers = ffn_layers(model)
    handles = []
    for layer in layers:
        if getattr(layer.module, "activation", None) != "relu" or layer.hook_pre_act is None:
            raise UnsupportedModelError(
                f"{layer.name}: FATReLU needs a ReLU FFN with hook_pre_act "
                f"(activation is {getattr(layer.module, 'activation', None)!r}; call swap_activation first)"
            )
        handles.append(layer.hook_pre_act.register_forward_hook(lambda _m, _i, out: fatrelu(out, threshold)))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def sine_staged_lambda(step: int, stages: Sequence[tuple[int, float]]) -> float:
    """Progressive L1 factor: stage i (ending at step s_i, target λ_i) rises on a quarter sine from λ_{i−1}.

    λ(step) = λ_{i−1} + (λ_i − λ_{i−1}) · sin(π (step − s_{i−1}) / (2 T_i)), T_i = s_i − s_{i−1},
    λ_0 = 0 at s_0 = 0; after the last stage λ stays at its final value.
    `stages` = [(s_1, λ_1), (s_2, λ_2), …] with s increasing.
    """
    prev_end, prev_lam = 0, 0.0
    for end, lam in stages:
        if end <= prev_end:
            raise SparsityError(f"stage ends must increase, got {[s for s, _ in stages]}")
        if step < end:
            frac = (step - prev_end) / (end - prev_end)
            return prev_lam + (lam - prev_lam) * math.sin(0.5 * math.pi * max(frac, 0.0))
        prev_end, prev_lam = end, lam
    return prev_lam


class ActivationL1:
    """L1 penalty on the FFN activations a (hook_act), for ProSparse's progressive regularisation.

    `attach(model)` registers hooks that keep the current forward's activations (with their graph);
    `loss(step)` = λ(step) · mean over layers of mean |a|, to add to the LM loss before backward. For a
    trainer whose loss you do not control, `densa.sparsity.callback.ActivationL1Callback` injects the same
    gradient.
    """

    def __init__(self, stages: Sequence[tuple[int, float]]) -> None:
        sine_staged_lambda(0, stages)  # validate early
        self.stages = list(stages)
        self._acts: list[torch.Tensor] = []
        self._handles: list = []
        self.last_l1 = float("nan")

    def attach(self, model: nn.Module) -> ActivationL1:
        self.detach()
        for layer in ffn_layers(model):
            self._handles.append(layer.hook_act.register_forward_hook(lambda _m, _i, out: self._store(out)))
        return self

    def _store(self, out: torch.Tensor) -> None:
        if torch.is_grad_enabled():  # skip eval forwards and checkpoint recomputation under no_grad
            self._acts.append(out)

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._acts.clear()

    def loss(self, step: int) -> torch.Tensor:
        """λ(step) · mean_l mean|a_l| over the forwards since the last call; clears the store."""
        if not self._acts:
            raise SparsityError(
                "ActivationL1.loss: no activations recorded (attach() it and run a forward first)"
            )
        l1 = torch.stack([a.abs().float().mean() for a in self._acts]).mean()
        self._acts.clear()
        self.last_l1 = float(l1.detach())
        return sine_staged_lambda(step, self.stages) * l1
