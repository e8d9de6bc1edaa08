"""Tiny, fast model configurations for unit and distributed tests."""

from __future__ import annotations

from typing import Any

import torch

from densa.models.config import ModelConfig


def tiny_model_config(**overrides: Any) -> ModelConfig:
    """2 layers, dim 32, 4 query / 2 KV heads (GQA), gated SiLU FFN of 64, vocab 128, 64 positions."""
    fields: dict[str, Any] = dict(
        vocab_size=128, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64, max_seq_len=64
    )
    fields.update(overrides)
    return ModelConfig(**fields)


def random_tokens(config: ModelConfig, batch: int = 2, seq: int = 16, seed: int = 0) -> torch.Tensor:
    """Token ids [batch, seq] from a private generator, so they do not disturb the global RNG."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, config.vocab_size, (batch, seq), generator=gen)
