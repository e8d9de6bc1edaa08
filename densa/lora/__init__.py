"""LoRA finetuning through `peft`: adapters on densa's projections, merged or adapter-only HF export.

    model = apply_lora(model, LoRAConfig(enabled=True, rank=8))   # only the adapters require grad
    merged = merge_lora_state(model.state_dict(), cfg)            # plain densa state dict
    save_adapter("out", model_config, model.state_dict(), cfg)    # loads with peft.PeftModel

`densa.lora.config` (the `lora:` recipe section) imports no torch; the rest imports peft lazily.
"""

from densa.lora.config import LoRAConfig

__all__ = ["LoRAConfig"]
