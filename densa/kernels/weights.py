"""FFN weights prepared once for sparse decode: row-major gate/up, neuron-major (transposed) down.

Memory layout is what makes skipping pay: a skipped neuron must be a skipped *contiguous row*.
- gate/up are output-sparse (neuron i is row i of W [ffn_dim, dim]), already contiguous in nn.Linear's layout.
- down is input-sparse (neuron i is *column* i of W_down [dim, ffn_dim]); gathering columns of a row-major
  matrix touches one element per cache line/sector per row and wastes the rest. So W_down is stored once
  transposed, `down_t` [ffn_dim, dim] row-major, where neuron i's output vector is one contiguous row
  (dim * elem_size bytes: 8 KB at dim 4096 in fp16).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SparseFFNWeights:
    """`first` [ffn_dim or 2*ffn_dim, dim]: the fused [gate; up] weight (gated) or up weight (plain), as in
    `densa.models.ffn.FeedForward`; `down_t` [ffn_dim, dim]: the transposed down projection."""

    first: torch.Tensor
    down_t: torch.Tensor
    gated: bool

    @classmethod
    def from_dense(
        cls, first_weight: torch.Tensor, down_weight: torch.Tensor, gated: bool
    ) -> SparseFFNWeights:
        """`first_weight`: `gate_up_proj.weight` [2*ffn_dim, dim] laid out [gate; up] when gated, else
        `up_proj.weight` [ffn_dim, dim]; `down_weight`: `down_proj.weight` [dim, ffn_dim].

        Copies W_down once into the neuron-major layout (the only copy); the other weight is shared when
        already contiguous. Parameters are detached: these weights serve inference only.
        """
        first, down = first_weight.detach(), down_weight.detach()
        if first.dim() != 2 or down.dim() != 2:
            raise ValueError(f"weights must be 2-D, got {tuple(first.shape)} and {tuple(down.shape)}")
        dim, ffn_dim = down.shape
        expected = (2 * ffn_dim if gated else ffn_dim, dim)
        if tuple(first.shape) != expected:
            name = "gate_up weight [2*ffn_dim, dim]" if gated else "up weight [ffn_dim, dim]"
            raise ValueError(
                f"{name} should be {expected} for down weight [dim, ffn_dim] = {tuple(down.shape)}, "
                f"got {tuple(first.shape)}"
            )
        if first.dtype != down.dtype or first.device != down.device:
            raise ValueError(
                f"weights differ in dtype/device: {first.dtype}/{first.device} vs {down.dtype}/{down.device}"
            )
        return cls(first=first.contiguous(), down_t=down.t().contiguous(), gated=gated)

    @property
    def ffn_dim(self) -> int:
        return self.down_t.shape[0]

    @property
    def dim(self) -> int:
        return self.down_t.shape[1]

    @property
    def dtype(self) -> torch.dtype:
        return self.down_t.dtype

    @property
    def device(self) -> torch.device:
        return self.down_t.device

    @property
    def gate(self) -> torch.Tensor:
        """[ffn_dim, dim] gate rows (gated) or up rows (plain): the projection the threshold is taken on."""
        return self.first[: self.ffn_dim]

    @property
    def up(self) -> torch.Tensor | None:
        """[ffn_dim, dim] up rows of a gated FFN (a view into `first`); None for a plain FFN."""
        return self.first[self.ffn_dim :] if self.gated else None

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> SparseFFNWeights:
        return SparseFFNWeights(self.first.to(device, dtype), self.down_t.to(device, dtype), self.gated)
