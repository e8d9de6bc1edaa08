"""Adapting a downstream model without knowledge (then freezing it): full finetuning, LoRA, BitFit.

`adaptable_params(model, method)` switches requires_grad to the method's parameters and returns them:
- full: every weight;
- lora: peft adapters on the attention and FFN projections (densa.lora.apply_lora, rank 8 by default;
  the paper uses rank 4 on BERT);
- bitfit: the bias terms only (a densa decoder has biases where `qkv_bias` is on, Qwen-style; the paper
  trains every bias of BERT, LayerNorm's included, which an RMSNorm decoder does not have).
"""

from __future__ import annotations

from typing import Literal

from torch import nn

from densa.plugins.errors import PluginError

Adaptation = Literal["full", "lora", "bitfit"]
ADAPTATIONS: tuple[Adaptation, ...] = ("full", "lora", "bitfit")


def adaptable_params(model: nn.Module, method: Adaptation, lora_rank: int = 8) -> list[nn.Parameter]:
    if method == "lora":
        from densa.lora.adapters import apply_lora
        from densa.lora.config import LoRAConfig

        apply_lora(model, LoRAConfig(enabled=True, rank=lora_rank, alpha=2.0 * lora_rank))
    elif method == "full":
        model.requires_grad_(True)
    elif method == "bitfit":
        for name, param in model.named_parameters():
            param.requires_grad_(name.endswith(".bias"))
    else:
        raise PluginError(f"adaptation {method!r}: expected one of {', '.join(ADAPTATIONS)}")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise PluginError(f"adaptation {method!r}: the model has no parameters it would train")
    return params
