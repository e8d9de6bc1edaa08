"""Declarative HF ↔ densa state-dict mapping (OLMo-core style templates).

Each `KeyMapping` names one densa tensor and the HF tensors it is made of. `{i}` stands for the layer
index. Several HF tensors are concatenated along dim 0 in the order given (densa fuses [q; k; v] and
[gate; up]); exporting splits the densa tensor back by the sizes named in `split`. Keeping the whole
conversion in one table is what makes a swapped or forgotten key visible in review.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from densa.errors import CheckpointError
from densa.models.config import ModelConfig

HF_LAYER = "model.layers.{i}"


@dataclass(frozen=True)
class KeyMapping:
    densa: str
    """densa parameter name, possibly with `{i}`."""
    hf: tuple[str, ...]
    """HF tensor names, concatenated along dim 0 in this order."""
    split: tuple[str, ...] = ()
    """Row counts of each HF tensor by name (`q`, `kv`, `ffn`), needed to split a fused tensor."""

    @property
    def per_layer(self) -> bool:
        return "{i}" in self.densa


@dataclass(frozen=True)
class ZeroKey:
    """An HF tensor densa lacks that must be all zeros (Llama's o_proj bias under attention_bias)."""

    hf: str
    rows: str


def state_mapping(config: ModelConfig) -> list[KeyMapping]:
    """The mapping for a Llama/Mistral/Qwen2-layout checkpoint of `config`'s shape."""
    attn, mlp = f"{HF_LAYER}.self_attn", f"{HF_LAYER}.mlp"
    qkv = (f"{attn}.q_proj", f"{attn}.k_proj", f"{attn}.v_proj")
    table = [
        KeyMapping("embed_tokens.weight", ("model.embed_tokens.weight",)),
        KeyMapping("layers.{i}.attn_norm.weight", (f"{HF_LAYER}.input_layernorm.weight",)),
        KeyMapping("layers.{i}.attn.qkv_proj.weight", tuple(f"{p}.weight" for p in qkv), ("q", "kv", "kv")),
        KeyMapping("layers.{i}.attn.o_proj.weight", (f"{attn}.o_proj.weight",)),
        KeyMapping("layers.{i}.ffn_norm.weight", (f"{HF_LAYER}.post_attention_layernorm.weight",)),
        KeyMapping("layers.{i}.ffn.down_proj.weight", (f"{mlp}.down_proj.weight",)),
        KeyMapping("norm.weight", ("model.norm.weight",)),
    ]
    if config.qkv_bias:
        table.append(
            KeyMapping("layers.{i}.attn.qkv_proj.bias", tuple(f"{p}.bias" for p in qkv), ("q", "kv", "kv"))
        )
    if config.gated:
        table.append(
            KeyMapping(
                "layers.{i}.ffn.gate_up_proj.weight",
                (f"{mlp}.gate_proj.weight", f"{mlp}.up_proj.weight"),
                ("ffn", "ffn"),
            )
        )
    else:
        table.append(KeyMapping("layers.{i}.ffn.up_proj.weight", (f"{mlp}.up_proj.weight",)))
    if not config.tie_embeddings:
        table.append(KeyMapping("lm_head.weight", ("lm_head.weight",)))
    return table


def zero_keys(config: ModelConfig, o_proj_bias: bool) -> list[ZeroKey]:
    """HF tensors that exist only as zeros: Llama's `attention_bias` also adds a bias to o_proj."""
    return [ZeroKey(f"{HF_LAYER}.self_attn.o_proj.bias", "dim")] if o_proj_bias and config.qkv_bias else []


# HF tensors that carry no parameters (old checkpoints saved RoPE tables).
IGNORED_HF_SUFFIXES = ("rotary_emb.inv_freq",)


def _rows(config: ModelConfig, name: str) -> int:
    return {
        "q": config.n_heads * config.head_dim,
        "kv": config.n_kv_heads * config.head_dim,
        "ffn": config.ffn_dim,
        "dim": config.dim,
    }[name]


def _expand(template: str, config: ModelConfig) -> list[tuple[int | None, str]]:
    if "{i}" not in template:
        return [(None, template)]
    return [(i, template.format(i=i)) for i in range(config.n_layers)]


def hf_to_densa(
    hf_state: dict[str, torch.Tensor], config: ModelConfig, *, o_proj_bias: bool = False
) -> dict[str, torch.Tensor]:
    """HF tensors -> densa state dict. Every HF tensor must be used: leftovers raise CheckpointError."""
    remaining = dict(hf_state)
    out: dict[str, torch.Tensor] = {}
    missing: list[str] = []
    for mapping in state_mapping(config):
        for i, densa_key in _expand(mapping.densa, config):
            names = [t.format(i=i) if i is not None else t for t in mapping.hf]
            absent = [n for n in names if n not in remaining]
            if absent:
                missing.extend(absent)
                continue
            parts = [remaining.pop(n) for n in names]
            out[densa_key] = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
    for zero in zero_keys(config, o_proj_bias):
        for _, name in _expand(zero.hf, config):
            bias = remaining.pop(name, None)
            if bias is not None and bool(bias.any()):
                raise CheckpointError(f"{name} is non-zero; densa has no output-projection bias")
    if config.tie_embeddings:
        # Some tied checkpoints still store lm_head; it must be the embedding itself.
        head = remaining.pop("lm_head.weight", None)
        if (
            head is not None
            and "embed_tokens.weight" in out
            and not torch.equal(head, out["embed_tokens.weight"])
        ):
            raise CheckpointError("tie_word_embeddings is true but lm_head.weight differs from embed_tokens")
    for key in [k for k in remaining if k.endswith(IGNORED_HF_SUFFIXES)]:
        del remaining[key]
    if missing:
        raise CheckpointError(f"HF checkpoint lacks {len(missing)} tensor(s), e.g. {missing[:4]}")
    if remaining:
        raise CheckpointError(
            f"HF checkpoint has {len(remaining)} tensor(s) densa cannot place, e.g. {sorted(remaining)[:4]}"
        )
    return out


def densa_to_hf(
    state: dict[str, torch.Tensor], config: ModelConfig, *, o_proj_bias: bool = False
) -> dict[str, torch.Tensor]:
    """densa state dict -> HF tensors; each is contiguous and owns its storage (safetensors needs that)."""
    out: dict[str, torch.Tensor] = {}
    for mapping in state_mapping(config):
        for i, densa_key in _expand(mapping.densa, config):
            if densa_key not in state:
                raise CheckpointError(f"densa state dict lacks {densa_key!r}")
            tensor = state[densa_key]
            names = [t.format(i=i) if i is not None else t for t in mapping.hf]
            if len(names) == 1:
                parts = [tensor]
            else:
                parts = list(tensor.split([_rows(config, s) for s in mapping.split], dim=0))
            for name, part in zip(names, parts, strict=True):
                out[name] = part.detach().clone().contiguous()
    for zero in zero_keys(config, o_proj_bias):
        for _, name in _expand(zero.hf, config):
            out[name] = torch.zeros(_rows(config, zero.rows), dtype=state["embed_tokens.weight"].dtype)
    return out
