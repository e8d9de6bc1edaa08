"""Rotary position embeddings in the `rotate_half` layout used by HF Llama checkpoints.

Frequencies follow HF's `rope_scaling`: `linear` divides positions by the factor, `llama3` interpolates
low-frequency bands only. The cos/sin tables are cached and grow on demand.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from densa.models.config import RopeScaling


def rope_inverse_frequencies(head_dim: int, theta: float, scaling: RopeScaling | None) -> torch.Tensor:
    """inv_freq[head_dim // 2] in fp32, with the configured scaling applied."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    if scaling is None:
        return inv_freq
    if scaling.type == "linear":
        return inv_freq / scaling.factor
    # llama3: keep high frequencies, divide low ones by `factor`, blend smoothly in between.
    old_len = scaling.original_max_position_embeddings
    low_freq_wavelen = old_len / scaling.low_freq_factor
    high_freq_wavelen = old_len / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / scaling.factor, inv_freq)
    smooth = (old_len / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor
    )
    blended = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return torch.where(is_medium, blended, scaled)


class RotaryEmbedding(nn.Module):
    """Produces cos/sin tables [T, head_dim] for given positions."""

    def __init__(self, head_dim: int, theta: float, scaling: RopeScaling | None, max_seq_len: int) -> None:
        super().__init__()
        self.register_buffer("inv_freq", rope_inverse_frequencies(head_dim, theta, scaling), persistent=False)
        self._cache_len = 0
        self._build(max_seq_len)

    def _build(self, length: int) -> None:
        positions = torch.arange(length, dtype=torch.float32, device=self.inv_freq.device)
        freqs = torch.outer(positions, self.inv_freq)  # [T, head_dim/2]
        angles = torch.cat((freqs, freqs), dim=-1)  # [T, head_dim]
        self.register_buffer("cos_cached", angles.cos(), persistent=False)
        self.register_buffer("sin_cached", angles.sin(), persistent=False)
        self._cache_len = length

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """positions: [T] or [B, T] int64 -> cos, sin of shape [T, D] or [B, 1, T, D]."""
        needed = int(positions.max()) + 1
        if needed > self._cache_len or self.cos_cached.device != positions.device:
            self.inv_freq = self.inv_freq.to(positions.device)
            self._build(max(needed, 2 * self._cache_len))
        cos, sin = self.cos_cached[positions], self.sin_cached[positions]
        if positions.dim() == 2:
            cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        return cos.to(dtype), sin.to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [B, H, T, D]; cos/sin broadcastable to it."""
    return x * cos + rotate_half(x) * sin
