"""Modeling code for densa decoder variants transformers has no class for.

Written next to exported weights by densa; needs only torch and transformers (densa need not be
installed). The body is Llama's (RMSNorm, RoPE, GQA, KV cache, generation); only the FFN differs:
with `gated_ffn: false` each layer computes act(x W_up) W_down, e.g. the ReLU² FFN; with
`activation_threshold` T > 0 (hidden_act relu) the activation is FATReLU, x if x > T else 0 (ProSparse).
"""

import torch
from torch import nn
from transformers.activations import ACT2FN
from transformers.models.llama.modeling_llama import LlamaForCausalLM

from .configuration_densa import DensaConfig


def _activation(name):
    if name == "relu2" and name not in ACT2FN:  # older transformers lack squared ReLU
        return lambda x: torch.relu(x).square()
    return ACT2FN[name]


class FATReLU(nn.Module):
    """x where x > threshold, else 0."""

    def __init__(self, threshold):
        super().__init__()
        self.threshold = float(threshold)

    def forward(self, x):
        return torch.where(x > self.threshold, x, torch.zeros_like(x))

    def extra_repr(self):
        return f"threshold={self.threshold}"


class DensaPlainMLP(nn.Module):
    """act(x W_up) W_down without a gate."""

    def __init__(self, config):
        super().__init__()
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.act_fn = _activation(config.hidden_act)

    def forward(self, x):
        return self.down_proj(self.act_fn(self.up_proj(x)))


class DensaForCausalLM(LlamaForCausalLM):
    config_class = DensaConfig

    def __init__(self, config):
        super().__init__(config)
        if not getattr(config, "gated_ffn", True):
            for layer in self.model.layers:
                layer.mlp = DensaPlainMLP(config)
            self.post_init()  # initialise the replaced modules like the rest
        threshold = float(getattr(config, "activation_threshold", 0.0) or 0.0)
        if threshold:
            if config.hidden_act != "relu":
                raise ValueError(f"activation_threshold needs hidden_act relu, got {config.hidden_act!r}")
            for layer in self.model.layers:
                layer.mlp.act_fn = FATReLU(threshold)  # Llama's gated MLP and DensaPlainMLP both call act_fn
