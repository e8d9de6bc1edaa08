"""LoRA adapters on a densa `Transformer` (through `peft`) and their state dicts.

`apply_lora` wraps each target projection in a `peft` LoRA layer, in place: the module keeps its name,
its weight moves to `NAME.base_layer.weight` and the adapter adds `NAME.lora_A.default.weight` (r × in)
and `NAME.lora_B.default.weight` (out × r, zeros at first); everything else stops requiring grad.
Checkpoints of a LoRA run hold these names; `merge_lora_state` folds them back into plain densa names
(W + alpha / rank · B·A), which is what evaluation, generation and a merged export read.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from densa.errors import DensaError
from densa.lora.config import LoRAConfig

ADAPTER = "default"  # peft's adapter name; one adapter per model
_A, _B, _BASE = f".lora_A.{ADAPTER}.weight", f".lora_B.{ADAPTER}.weight", ".base_layer."


def peft_config(cfg: LoRAConfig, target_modules: list[str] | None = None, **extra: Any) -> Any:
    """The `peft.LoraConfig` of `cfg` (on densa's module names unless `target_modules` is given)."""
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=list(target_modules or cfg.target_modules),
        bias="none",
        **extra,
    )


def apply_lora(model: nn.Module, cfg: LoRAConfig) -> nn.Module:
    """Add LoRA adapters to `model`'s target projections in place; only the adapters require grad."""
    from peft import inject_adapter_in_model

    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    absent = [t for t in cfg.target_modules if t not in present]
    if absent:
        raise DensaError(f"lora.target_modules: the model has no {', '.join(absent)} projection")
    if any(_A in name for name, _ in model.named_parameters()):
        raise DensaError("the model already has LoRA adapters")
    return inject_adapter_in_model(peft_config(cfg), model)


def is_lora_state(state: dict[str, torch.Tensor]) -> bool:
    """Whether a state dict holds LoRA adapters (a LoRA run's checkpoint or model)."""
    return any(key.endswith(_A) for key in state)


def adapter_pairs(state: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{densa module name: (A, B)} of every adapter in a LoRA state dict."""
    pairs = {}
    for key, a in state.items():
        if key.endswith(_A):
            module = key[: -len(_A)]
            b = state.get(module + _B)
            if b is None:
                raise DensaError(f"LoRA state has {key} but no {module + _B}")
            pairs[module] = (a, b)
    return pairs


def merge_lora_state(state: dict[str, torch.Tensor], cfg: LoRAConfig) -> dict[str, torch.Tensor]:
    """A plain densa state dict: each adapted W replaced by W + alpha / rank · B·A (computed in fp32, cast
    back to W's dtype); adapter tensors dropped, `base_layer.` removed from names. A state dict without
    adapters comes back as it is."""
    if not is_lora_state(state):
        return state
    pairs = adapter_pairs(state)
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.endswith((_A, _B)):
            continue
        name = key.replace(_BASE, ".")
        module = name.rsplit(".", 1)[0]
        if _BASE in key and key.endswith(".weight") and module in pairs:
            a, b = pairs[module]
            delta = cfg.scaling * (b.to(torch.float32) @ a.to(torch.float32))
            value = (value.to(torch.float32) + delta).to(value.dtype)
        out[name] = value
    return out
