"""Position-wise FFN, gated (act(x W_gate) ⊙ x W_up) or plain (act(x W_up)), then W_down.

`hook_act` sees the per-neuron activations [B, T, ffn_dim] that feed W_down: the quantity
activation-sparsity metrics (CETT, activation ratio) and MoEfication are defined on.
"""

from __future__ import annotations

import torch
from torch import nn

from densa.models.activations import get_activation
from densa.models.config import ModelConfig
from densa.models.hooks import HookPoint
from densa.models.linear import column_linear, row_linear


class FeedForward(nn.Module):
    """Gated FFNs fuse gate and up into one projection laid out [gate; up] (per tensor-parallel rank)."""

    def __init__(self, config: ModelConfig, tp_size: int = 1) -> None:
        super().__init__()
        if config.ffn_dim % tp_size:
            raise ValueError(f"ffn_dim ({config.ffn_dim}) must be divisible by tp ({tp_size})")
        self.gated = config.gated
        self.activation = config.activation
        # FATReLU (activation_threshold > 0) lives in act_fn, so hook_act and the MoE/sparsity code that
        # calls act_fn see the thresholded activations.
        self.activation_threshold = config.activation_threshold
        self.act_fn = get_activation(config.activation, config.activation_threshold)
        self.n_local_neurons = config.ffn_dim // tp_size
        up_out = 2 * config.ffn_dim if config.gated else config.ffn_dim
        if config.gated:
            self.gate_up_proj = column_linear(config.dim, up_out, bias=False, tp_size=tp_size)
        else:
            self.up_proj = column_linear(config.dim, up_out, bias=False, tp_size=tp_size)
        self.down_proj = row_linear(config.ffn_dim, config.dim, bias=False, tp_size=tp_size)
        self.hook_pre_act = HookPoint()  # the gate (gated) or up (plain) pre-activation [B, T, ffn_dim]
        self.hook_act = HookPoint()  # the neuron activations fed to down_proj [B, T, ffn_dim]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gated:
            gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
            hidden = self.act_fn(self.hook_pre_act(gate)) * up
        else:
            hidden = self.act_fn(self.hook_pre_act(self.up_proj(x)))
        return self.down_proj(self.hook_act(hidden))
