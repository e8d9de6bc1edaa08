"""`ModelConfig`: every number that fixes a decoder's shape and numerics."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

ACTIVATIONS = ("relu", "relu2", "silu", "gelu", "gelu_tanh")
ROPE_SCALING_TYPES = ("linear", "llama3")


@dataclass(frozen=True, kw_only=True)
class RopeScaling:
    """RoPE frequency scaling for context extension (HF `rope_scaling` semantics)."""

    type: str
    """`linear` (positions divided by `factor`) or `llama3` (frequency-band interpolation)."""
    factor: float
    """Context extension factor."""
    low_freq_factor: float = 1.0
    """llama3 only: wavelengths above original_max_position_embeddings / low_freq_factor are scaled fully."""
    high_freq_factor: float = 4.0
    """llama3 only: wavelengths below original_max_position_embeddings / high_freq_factor are kept."""
    original_max_position_embeddings: int = 8192
    """llama3 only: the context length the model was pretrained with."""

    def __post_init__(self) -> None:
        if self.type not in ROPE_SCALING_TYPES:
            raise ValueError(f"rope_scaling.type: {self.type!r} is not one of {ROPE_SCALING_TYPES}")
        if self.factor <= 0:
            raise ValueError(f"rope_scaling.factor must be > 0, got {self.factor}")


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """A Llama-family decoder: RMSNorm, RoPE, grouped-query attention, gated or plain FFN."""

    vocab_size: int
    """Number of token embeddings (may exceed the tokenizer's vocabulary for padding)."""
    dim: int
    """Hidden size."""
    n_layers: int
    """Number of transformer blocks."""
    n_heads: int
    """Query heads."""
    n_kv_heads: int | None = None
    """Key/value heads (grouped-query attention); defaults to n_heads."""
    head_dim: int | None = None
    """Per-head size; defaults to dim // n_heads."""
    ffn_dim: int
    """FFN intermediate size (number of neurons per layer)."""
    activation: str = "silu"
    """FFN activation: relu, relu2 (squared ReLU), silu, gelu or gelu_tanh."""
    activation_threshold: float = 0.0
    """FATReLU threshold T ≥ 0 (activation relu only): a = x if x > T else 0. ProSparse runs trained with
    `sparsity.prosparse.activation: fatrelu` record it here, so checkpoints and exports keep it."""
    gated: bool = True
    """Gated FFN act(x W_gate) * (x W_up) (SwiGLU, ReGLU, GeGLU); False gives act(x W_up)."""
    norm_eps: float = 1e-5
    """RMSNorm epsilon."""
    rope_theta: float = 10000.0
    """RoPE base."""
    rope_scaling: RopeScaling | None = None
    """Optional RoPE scaling (linear or llama3)."""
    max_seq_len: int = 2048
    """Longest sequence the RoPE tables are precomputed for (they grow on demand)."""
    qkv_bias: bool = False
    """Bias on the Q/K/V projections (Qwen2)."""
    tie_embeddings: bool = False
    """Share the input embedding with the output projection."""
    init_std: float = 0.02
    """Std of the normal initialisation; output projections get init_std / sqrt(2 * n_layers)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Free-form metadata carried through checkpoints (e.g. the HF architecture it came from)."""

    def __post_init__(self) -> None:
        if self.n_kv_heads is None:
            object.__setattr__(self, "n_kv_heads", self.n_heads)
        if self.head_dim is None:
            if self.dim % self.n_heads:
                raise ValueError(f"dim ({self.dim}) must be divisible by n_heads ({self.n_heads})")
            object.__setattr__(self, "head_dim", self.dim // self.n_heads)
        if isinstance(self.rope_scaling, dict):
            object.__setattr__(self, "rope_scaling", RopeScaling(**self.rope_scaling))
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation: {self.activation!r} is not one of {ACTIVATIONS}")
        if self.activation_threshold < 0 or not math.isfinite(self.activation_threshold):
            raise ValueError(f"activation_threshold must be finite and >= 0, got {self.activation_threshold}")
        if self.activation_threshold and self.activation != "relu":
            raise ValueError(
                f"activation_threshold ({self.activation_threshold}) needs activation: relu (FATReLU), "
                f"got {self.activation!r}"
            )
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads ({self.n_heads}) must be divisible by n_kv_heads ({self.n_kv_heads})")
        for name in ("vocab_size", "dim", "n_layers", "n_heads", "ffn_dim", "head_dim"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")

    @property
    def ffn_name(self) -> str:
        """Conventional name of the FFN variant: SwiGLU, ReGLU, GeGLU, ReLU², ReLU…"""
        gated = {
            "silu": "SwiGLU",
            "relu": "ReGLU",
            "gelu": "GeGLU",
            "gelu_tanh": "GeGLU",
            "relu2": "ReLU²GLU",
        }
        plain = {"silu": "SiLU", "relu": "ReLU", "gelu": "GELU", "gelu_tanh": "GELU", "relu2": "ReLU²"}
        return (gated if self.gated else plain)[self.activation]

    def num_params(self, include_embeddings: bool = True) -> int:
        """Parameter count in closed form (tp = 1)."""
        q, kv = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        attn = self.dim * (q + 2 * kv) + q * self.dim + (q + 2 * kv if self.qkv_bias else 0)
        ffn = self.dim * self.ffn_dim * (3 if self.gated else 2)
        per_layer = attn + ffn + 2 * self.dim
        n = self.n_layers * per_layer + self.dim
        if include_embeddings:
            n += self.vocab_size * self.dim * (1 if self.tie_embeddings else 2)
        return n

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown ModelConfig keys: {unknown}")
        return cls(**data)


# Not shapes: the context RoPE tables are built for, the init std, free-form metadata, and the FATReLU
# threshold (a FATReLU checkpoint may seed a ReLU run; ProSparse applies its own T).
NOT_SHAPE_FIELDS = ("extra", "max_seq_len", "init_std", "activation_threshold")
REL_TOL = 1e-6
"""Floats that differ by less than this (relative) are the same: a config written as float32
(`9.999999747e-06`) and one written as `1e-5` describe one model."""


def values_agree(a: Any, b: Any, rel_tol: float = REL_TOL) -> bool:
    """Equal, floats to a relative `rel_tol`, strings case-insensitively, dicts item by item."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(values_agree(a[k], b[k], rel_tol) for k in a)
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return math.isclose(a, b, rel_tol=rel_tol, abs_tol=0.0)
    if isinstance(a, str) and isinstance(b, str):
        return a.lower() == b.lower()
    return a == b


def shape_differences(
    a: ModelConfig, b: ModelConfig, fields: Collection[str] | None = None, rel_tol: float = REL_TOL
) -> dict[str, tuple[Any, Any]]:
    """{field: (a's value, b's value)} for the shape fields (all but NOT_SHAPE_FIELDS; only `fields` when
    given) where two configs disagree; floats compare with relative tolerance `rel_tol`."""
    da, db = dataclasses.asdict(a), dataclasses.asdict(b)
    names = [k for k in da if k not in NOT_SHAPE_FIELDS and (fields is None or k in fields)]
    return {k: (da[k], db[k]) for k in names if not values_agree(da[k], db[k], rel_tol)}
