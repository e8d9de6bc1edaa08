"""Errors raised by densa.sparse_moe for bad input (printed by the CLI without a traceback)."""

from __future__ import annotations

from densa.errors import DensaError


class MoEError(DensaError):
    """An MoE / SSD request that cannot be satisfied as given (expert counts, top-k, model structure)."""


def check_experts(ffn_dim: int, num_experts: int) -> int:
    """Return the expert size m = ffn_dim / num_experts, or raise if the split is not exact."""
    if num_experts < 1:
        raise MoEError(f"num_experts must be >= 1, got {num_experts}")
    if ffn_dim % num_experts:
        raise MoEError(
            f"num_experts ({num_experts}) must divide ffn_dim ({ffn_dim}) so every expert has the same size"
        )
    return ffn_dim // num_experts


def check_top_k(top_k: int, num_experts: int) -> int:
    if not 1 <= top_k <= num_experts:
        raise MoEError(f"top_k must be between 1 and num_experts ({num_experts}), got {top_k}")
    return top_k
