"""LoRA's settings: the `lora:` recipe section is this one dataclass.

Torch-free on purpose: the recipe schema imports it, and the recipe loader reads its field types
(Literal choices, with did-you-mean) and docstrings (docs/config_reference.md) from here. Rules about
one field live in `problems()`; rules that need the rest of the recipe (init.from_path, model.gated,
parallel.tp, other methods) are in `densa.config.checks`.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Literal

from densa.errors import DensaError

# densa's projection modules (the fused ones stand for HF's q/k/v and gate/up projections).
LoRATarget = Literal["qkv_proj", "o_proj", "gate_up_proj", "up_proj", "down_proj"]
LoRAExport = Literal["merged", "adapter"]
TARGETS: tuple[str, ...] = typing.get_args(LoRATarget)


@dataclass(frozen=True, kw_only=True)
class LoRAConfig:
    """LoRA finetuning through `peft` (docs/lora.md): the loaded model's weights stay frozen and only
    low-rank adapters W + (alpha / rank)·B·A on the target projections train; tp = 1."""

    enabled: bool = False
    """Train LoRA adapters instead of the model's weights (needs init.from_path)."""
    rank: int = 8
    """Rank r of each adapter (A is r × in, B is out × r; B starts at zero)."""
    alpha: float = 16.0
    """Scale numerator: the adapter's update is multiplied by alpha / rank."""
    dropout: float = 0.0
    """Dropout on the adapter's input during training, in [0, 1)."""
    target_modules: tuple[LoRATarget, ...] = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")
    """densa projections that get adapters: qkv_proj (HF q/k/v_proj, one shared A), o_proj, gate_up_proj
    (HF gate/up_proj; gated FFNs), up_proj (non-gated FFNs), down_proj."""
    export: LoRAExport = "merged"
    """What `export.hf_dir` and `densa export` write: merged (a plain HF folder with W + (alpha/rank)·B·A)
    or adapter (adapter_config.json + adapter_model.safetensors for peft.PeftModel.from_pretrained on the
    base HF folder, init.from_path)."""

    @property
    def scaling(self) -> float:
        """alpha / rank, the factor on B·A."""
        return self.alpha / self.rank

    def problems(self) -> list[tuple[str, str]]:
        """(field, message) for every rule about a single field that this config breaks."""
        out = []
        if self.rank < 1:
            out.append(("rank", f"must be > 0, got {self.rank}"))
        if self.alpha <= 0:
            out.append(("alpha", f"must be > 0, got {self.alpha}"))
        if not 0.0 <= self.dropout < 1.0:
            out.append(("dropout", f"must be in [0, 1), got {self.dropout}"))
        if not self.target_modules:
            out.append(("target_modules", f"is empty (choose from {', '.join(TARGETS)})"))
        twice = sorted({t for t in self.target_modules if self.target_modules.count(t) > 1})
        if twice:
            out.append(("target_modules", f"lists {', '.join(twice)} more than once"))
        return out

    def __post_init__(self) -> None:
        found = self.problems()
        if found:  # the recipe loader turns "lora.FIELD: ..." into a problem at that dotted path
            name, message = found[0]
            raise DensaError(f"lora.{name}: {message}")
