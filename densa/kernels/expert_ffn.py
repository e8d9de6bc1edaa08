"""Top-k MoE experts for a few tokens (decode), reading only the selected experts' rows.

Expert e is the neuron block [e·m, (e+1)·m) of a `SparseFFNWeights` (densa.sparse_moe stores neurons expert
by expert), so an expert is a known active set and its rows are contiguous. The output is
out[n] = Σ_j expert_{experts[n, j]}(x[n]), the forward of `MoEFeedForward` (its combine weight is exactly 1).

Paths (backend="auto"):
- CPU, fp32, relu / relu2 / silu, native kernels built -> `native_cpu.ExpertFFN`: one call per layer, each
  selected expert's rows read once for all its tokens;
- CUDA, at most TRITON_MAX_TOKENS tokens that all chose the same experts (batch 1 above all) -> the Triton
  sparse-FFN kernels with active_idx = those experts' rows (they take one row set per batch);
- otherwise -> torch: per selected expert, its tokens times its contiguous weight blocks (no weight copy).
"""

from __future__ import annotations

from typing import Literal

import torch

from densa.kernels import native_cpu
from densa.kernels.dispatch import TRITON_MAX_TOKENS, _triton_module
from densa.kernels.reference import get_activation
from densa.kernels.weights import SparseFFNWeights

ExpertBackend = Literal["auto", "native", "triton", "torch"]


def expert_rows(experts: torch.Tensor, expert_size: int) -> torch.Tensor:
    """Neuron indices of the experts in `experts` (1-D ids), expert by expert: the rows the set reads."""
    offsets = torch.arange(expert_size, device=experts.device)
    return (experts.to(torch.int64)[:, None] * expert_size + offsets).reshape(-1)


def expert_ffn_torch(
    x: torch.Tensor, weights: SparseFFNWeights, experts: torch.Tensor, expert_size: int, activation: str
) -> torch.Tensor:
    """The torch path (any device and float dtype): x [N, dim], experts [N, k] -> [N, dim]."""
    act = get_activation(activation)
    out = torch.zeros_like(x)
    f = weights.ffn_dim
    for e in torch.unique(experts).tolist():
        tokens = (experts == e).any(dim=1).nonzero().squeeze(1)
        rows = slice(e * expert_size, (e + 1) * expert_size)
        xe = x.index_select(0, tokens)
        h = act(xe @ weights.first[rows].t())
        if weights.gated:
            h = h * (xe @ weights.first[f + rows.start : f + rows.stop].t())
        out.index_add_(0, tokens, h @ weights.down_t[rows])
    return out


class ExpertKernel:
    """One MoE layer's experts prepared for decode: `kernel(x [N, dim], experts [N, k]) -> [N, dim]`."""

    def __init__(
        self,
        weights: SparseFFNWeights,
        num_experts: int,
        activation: str,
        backend: ExpertBackend = "auto",
    ) -> None:
        if backend not in ("auto", "native", "triton", "torch"):
            raise ValueError(f"backend must be auto, native, triton or torch, got {backend!r}")
        if num_experts < 1 or weights.ffn_dim % num_experts:
            raise ValueError(f"{weights.ffn_dim} neurons do not split into {num_experts} equal experts")
        get_activation(activation)  # an unknown name fails here, not at the first token
        self.weights, self.num_experts, self.activation = weights, num_experts, activation
        self.expert_size = weights.ffn_dim // num_experts
        self.backend = backend
        self.native: native_cpu.ExpertFFN | None = None
        if backend in ("auto", "native") and self._native_ok():
            self.native = native_cpu.ExpertFFN(
                weights.gate, weights.up, weights.down_t, num_experts, activation
            )
        elif backend == "native":
            raise RuntimeError(
                "backend='native' needs fp32 CPU weights, a relu/relu2/silu activation and the native "
                "CPU kernels (see densa/kernels/native_cpu.py)"
            )
        self.last_path = ""

    def _native_ok(self) -> bool:
        w = self.weights
        return (
            self.activation in native_cpu.FUSED_ACTIVATIONS
            and native_cpu.supports(w.first, w.down_t)
            and native_cpu.available()
        )

    def choose(self, x: torch.Tensor, experts: torch.Tensor) -> str:
        """The path a call with these inputs takes: native, triton or torch."""
        if self.native is not None and native_cpu.supports(x) and native_cpu.available():
            return "native"
        if self.backend in ("auto", "triton") and x.device.type == "cuda" and x.shape[0] <= TRITON_MAX_TOKENS:
            ordered = experts.sort(dim=1).values
            same_set = x.shape[0] == 1 or bool((ordered == ordered[:1]).all())
            if same_set and _triton_module() is not None:
                return "triton"
        if self.backend == "triton":
            raise RuntimeError("backend='triton' needs CUDA tensors, triton and one expert set for the batch")
        return "torch"

    def __call__(self, x: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.weights.dim:
            raise ValueError(f"x must be [tokens, {self.weights.dim}], got {tuple(x.shape)}")
        if experts.dim() != 2 or experts.shape[0] != x.shape[0]:
            raise ValueError(f"experts must be [{x.shape[0]}, k], got {tuple(experts.shape)}")
        self.last_path = path = self.choose(x, experts)
        if path == "native":
            return self.native(x, experts)  # type: ignore[misc]
        if path == "triton":
            rows = expert_rows(experts[0], self.expert_size)
            return _triton_module().sparse_ffn_triton(x, self.weights, None, rows, self.activation)  # type: ignore[union-attr]
        return expert_ffn_torch(x, self.weights, experts, self.expert_size, self.activation)
