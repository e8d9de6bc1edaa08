"""Adapter-only export of a LoRA run: a folder `peft.PeftModel.from_pretrained(base, FOLDER)` loads on the
HF model it was trained from (init.from_path).

densa fuses q/k/v into `qkv_proj` and gate/up into `gate_up_proj`; one adapter there (A shared, B over
the fused rows) is exactly one adapter per HF projection with that same A and B's rows for it, so the
adapter file holds HF names (`base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight`, ...)
and `adapter_config.json` targets HF's module names.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from densa.errors import DensaError
from densa.lora.adapters import adapter_pairs, peft_config
from densa.lora.config import LoRAConfig
from densa.models.config import ModelConfig

ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."


def hf_adapter_state(
    state: dict[str, torch.Tensor], config: ModelConfig
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(peft's adapter tensors under HF names, HF target module names) from a LoRA run's state dict."""
    from densa.models.hf.mapping import _expand, _rows, state_mapping

    pairs = adapter_pairs(state)
    out: dict[str, torch.Tensor] = {}
    targets: set[str] = set()
    for mapping in state_mapping(config):
        if not mapping.densa.endswith(".weight"):
            continue
        for i, densa_key in _expand(mapping.densa, config):
            pair = pairs.pop(densa_key[: -len(".weight")], None)
            if pair is None:
                continue
            a, b = pair
            names = [t.format(i=i) if i is not None else t for t in mapping.hf]
            rows = [_rows(config, s) for s in mapping.split] if len(names) > 1 else [b.shape[0]]
            for name, b_part in zip(names, b.split(rows, dim=0), strict=True):
                module = name[: -len(".weight")]
                out[f"{PEFT_PREFIX}{module}.lora_A.weight"] = a.detach().clone().contiguous()
                out[f"{PEFT_PREFIX}{module}.lora_B.weight"] = b_part.detach().clone().contiguous()
                targets.add(module.rsplit(".", 1)[-1])
    if pairs:
        raise DensaError(f"LoRA adapters on modules HF has no tensor for: {sorted(pairs)[:4]}")
    if not out:
        raise DensaError("the state dict holds no LoRA adapters")
    return out, sorted(targets)


def save_adapter(
    out: str | os.PathLike,
    config: ModelConfig,
    state: dict[str, torch.Tensor],
    lora: LoRAConfig,
    *,
    base_model: str | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write adapter_config.json and adapter_model.safetensors into the existing folder `out`.

    `base_model` (a Hub id) goes into the config's base_model_name_or_path; None leaves it empty (a local
    folder's path would mean nothing elsewhere)."""
    from safetensors.torch import save_file

    tensors, targets = hf_adapter_state(state, config)
    if dtype is not None:
        tensors = {k: v.to(dtype) for k, v in tensors.items()}
    out = Path(out)
    peft_config(lora, targets, task_type="CAUSAL_LM", base_model_name_or_path=base_model).save_pretrained(
        str(out)
    )
    save_file(tensors, str(out / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    return out


def _card(name: str, config: ModelConfig, license: str | None, lora: LoRAConfig) -> str:
    source = config.extra.get("hf_source")
    source = source if isinstance(source, dict) else {}
    base = source.get("repo_id")
    meta = {"library_name": "peft", "base_model": base, "license": license or source.get("license")}
    front = "".join(f"{k}: {v}\n" for k, v in meta.items() if v) + "tags:\n- densa\n- lora\n"
    lines = [
        f"---\n{front}---",
        f"# {name}\n",
        f"A LoRA adapter trained with densa (rank {lora.rank}, alpha {lora.alpha:g}, on"
        f" {', '.join(lora.target_modules)}) for {base or 'the model it was trained from'}.\n",
        "```python",
        "from peft import PeftModel",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f'base = AutoModelForCausalLM.from_pretrained("{base or "BASE_HF_FOLDER"}")',
        'model = PeftModel.from_pretrained(base, "THIS_FOLDER")  # .merge_and_unload(): a plain model',
        'tokenizer = AutoTokenizer.from_pretrained("THIS_FOLDER")',
        "```",
    ]
    return "\n".join(lines) + "\n"


def export_adapter(
    out: str | os.PathLike,
    config: ModelConfig,
    state: dict[str, torch.Tensor],
    lora: LoRAConfig,
    *,
    tokenizer: str | os.PathLike | None = None,
    dtype: torch.dtype | None = None,
    name: str | None = None,
    license: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the adapter folder `out` atomically: adapter files, the run's tokenizer, a model card."""
    from densa.inference.export import write_tokenizer
    from densa.models.checkpoint_io import atomic_dir

    source = config.extra.get("hf_source")
    base = source.get("repo_id") if isinstance(source, dict) else None
    with atomic_dir(out, overwrite) as tmp:
        save_adapter(tmp, config, state, lora, base_model=base, dtype=dtype)
        if tokenizer is not None:
            write_tokenizer(Path(tokenizer), tmp)
        (tmp / "README.md").write_text(_card(name or Path(out).name, config, license, lora), encoding="utf-8")
    return Path(out)
