"""The knowledge plugin: frozen entity embeddings and a mapping network into a model's input space.

`KnowledgePlugin.vectors(entity_ids)` is M(E[e]) for ids ≥ 0 and a zero vector for UNKNOWN (a mention
that links to no entity, as the paper). The mapper is affine by default (the paper's Linear(128 → 768));
`mlp` adds one hidden layer for ablations. The plugin records which model (an architecture fingerprint:
the input-embedding space the vectors live in, shared by a base model and every finetuned descendant)
and which KB and embedding table it was trained for; `check_fits` refuses any other.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

import torch
from torch import nn

from densa.plugins.errors import PluginError

NO_ENTITY = -1
"""entity_ids value of an ordinary token (its own word embedding)."""
UNKNOWN = -2
"""entity_ids value of an [E] token whose mention links to no entity: a zero vector."""
MapperKind = Literal["affine", "mlp"]

# What makes two models share an input-embedding space (densa ModelConfig / HF config field names).
_ARCH_FIELDS = (
    "dim",
    "vocab_size",
    "n_layers",
    "n_heads",
    "n_kv_heads",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "model_type",
)


def model_fingerprint(model: nn.Module) -> str:
    """Short hash of the architecture of a densa Transformer or HF model (PEFT wrappers unwrapped)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = inner.config
    fields = config.to_dict() if hasattr(config, "to_dict") else vars(config)
    picked = {k: fields[k] for k in _ARCH_FIELDS if k in fields}
    picked["family"] = "densa" if hasattr(inner, "embed_tokens") else "hf"
    return hashlib.sha256(json.dumps(picked, sort_keys=True).encode()).hexdigest()[:16]


def embeddings_fingerprint(embeddings: torch.Tensor) -> str:
    """Hash of an entity-embedding table's values (a retrained or shuffled table is another table)."""
    data = embeddings.detach().to(torch.float32).contiguous().cpu().numpy().tobytes()
    return hashlib.sha256(data).hexdigest()[:16]


def input_embedding(model: nn.Module) -> nn.Embedding:
    """The token-embedding table of a densa Transformer (also PEFT-wrapped) or an HF model."""
    if hasattr(model, "get_input_embeddings"):
        return model.get_input_embeddings()
    return model.embed_tokens


class KnowledgePlugin(nn.Module):
    def __init__(
        self,
        embeddings: torch.Tensor,
        model_dim: int,
        *,
        kind: MapperKind = "affine",
        kb_fingerprint: str = "",
        model_fp: str = "",
        mention_form: str = "slash",
    ) -> None:
        super().__init__()
        kb_dim = embeddings.shape[1]
        self.register_buffer("embeddings", embeddings.detach().clone(), persistent=False)
        if kind == "affine":
            self.mapper: nn.Module = nn.Linear(kb_dim, model_dim)
        elif kind == "mlp":
            hidden = nn.Linear(kb_dim, model_dim)
            self.mapper = nn.Sequential(hidden, nn.GELU(), nn.Linear(model_dim, model_dim))
        else:
            raise PluginError(f"mapper kind {kind!r}: expected 'affine' or 'mlp'")
        self.kind, self.model_dim = kind, model_dim
        self.mention_form = mention_form
        """How mentions are rewritten for this mapper (densa.plugins.inject): it was tuned on that input."""
        self.kb_fingerprint, self.model_fp = kb_fingerprint, model_fp
        self.embeddings_fp = embeddings_fingerprint(embeddings)

    def vectors(self, entity_ids: torch.Tensor) -> torch.Tensor:
        """[..., model_dim]: M(E[id]) where id ≥ 0, zeros where id < 0 (UNKNOWN and NO_ENTITY)."""
        known = entity_ids >= 0
        mapped = self.mapper(self.embeddings[entity_ids.clamp(min=0)])
        return mapped * known.unsqueeze(-1).to(mapped.dtype)

    def metadata(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "mention_form": self.mention_form,
            "kb_dim": int(self.embeddings.shape[1]),
            "model_dim": self.model_dim,
            "n_entities": int(self.embeddings.shape[0]),
            "model_fingerprint": self.model_fp,
            "kb_fingerprint": self.kb_fingerprint,
            "embeddings_fingerprint": self.embeddings_fp,
        }


def check_fits(meta: dict[str, Any], model_fp: str, kb_fp: str, emb_fp: str, what: str) -> None:
    """Raise PluginError naming the mismatch unless `meta` was recorded for this model, KB and table."""
    for key, ours, name in (
        ("model_fingerprint", model_fp, "model"),
        ("kb_fingerprint", kb_fp, "knowledge base"),
        ("embeddings_fingerprint", emb_fp, "entity-embedding table"),
    ):
        if meta.get(key) != ours:
            raise PluginError(
                f"{what} was trained for another {name}: {key} {meta.get(key)} != this {name}'s {ours}"
            )
