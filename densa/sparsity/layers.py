"""Find the FFN layers of a model and the per-neuron down-projection norms the metrics are defined on.

A layer qualifies when it carries `hook_act` (the activations a that feed W_down) and a `down_proj` whose
weight is [dim, ffn_dim]. Any densa `Transformer` does, including HF-imported ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from densa.models.hooks import HookPoint
from densa.sparsity.errors import UnsupportedModelError


@dataclass(frozen=True)
class FFNLayer:
    index: int
    """Position among the model's FFN layers (= transformer block index for a densa Transformer)."""
    name: str
    """Qualified module name, e.g. `layers.3.ffn`."""
    module: nn.Module

    @property
    def hook_act(self) -> HookPoint:
        return self.module.hook_act

    @property
    def hook_pre_act(self) -> HookPoint | None:
        return getattr(self.module, "hook_pre_act", None)

    @property
    def down_weight(self) -> torch.Tensor:
        """W_down, [dim, ffn_dim]: column i is neuron i's output direction."""
        return self.module.down_proj.weight

    @property
    def num_neurons(self) -> int:
        return self.down_weight.shape[1]

    def down_norms(self) -> torch.Tensor:
        """‖W_down[:, i]‖₂ per neuron, float32 [ffn_dim]."""
        return self.down_weight.detach().float().norm(dim=0)


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside a DeepSpeed engine / DDP wrapper (both expose it as `.module`)."""
    while (
        not isinstance(model, HookPoint) and hasattr(model, "module") and isinstance(model.module, nn.Module)
    ):
        model = model.module
    return model


def ffn_layers(model: nn.Module) -> list[FFNLayer]:
    """The model's FFN layers in forward order; raises UnsupportedModelError when there are none."""
    model = unwrap(model)
    if getattr(model, "tp_size", 1) != 1:
        raise UnsupportedModelError(
            f"tensor-parallel model (tp_size={model.tp_size}): sparsity metrics need the full W_down; "
            "load the checkpoint with tp_size=1"
        )
    found = []
    for name, module in model.named_modules():
        hook = getattr(module, "hook_act", None)
        down = getattr(module, "down_proj", None)
        if not isinstance(hook, HookPoint) or down is None:
            continue
        weight = getattr(down, "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
            raise UnsupportedModelError(
                f"{name}.down_proj has no 2-D weight; cannot compute neuron output norms"
            )
        found.append(FFNLayer(len(found), name, module))
    if not found:
        raise UnsupportedModelError(
            f"{type(model).__name__} has no FFN hook points: expected modules with `hook_act` and "
            "`down_proj` (e.g. `layers.{i}.ffn` of a densa Transformer)"
        )
    return found
