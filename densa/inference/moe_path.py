"""The MoE decode path: an MoE model's top-k experts through `densa.kernels.expert_ffn` for small steps.

Steps of at most MAX_TOKENS tokens (decode, batch ≤ MAX_TOKENS) route with the layer's own router and the
same `topk` call as `MoEFeedForward.forward`, so the same experts are chosen, then run `ExpertKernel`: one
native call per layer on CPU fp32, the Triton sparse-FFN kernels on CUDA for one expert set, torch slices
otherwise. Only the chosen experts' rows are read. Larger steps (prefill) keep `MoEFeedForward`'s grouped
matmuls, where BLAS over many tokens per expert is faster than reading rows once.
The output equals the reference path up to fp32 summation order (tests/inference/test_moe_path.py).
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator
from typing import Literal

import torch
from torch import nn

from densa.kernels import SparseFFNWeights
from densa.kernels.expert_ffn import ExpertBackend, ExpertKernel
from densa.models.transformer import Transformer
from densa.sparse_moe.moe_ffn import MoEFeedForward

MAX_TOKENS = 64
MoEBackend = Literal["auto", "native", "triton", "torch", "reference"]


class MoEDecodeFFN(nn.Module):
    """Wraps an MoEFeedForward: its own forward for large steps, `ExpertKernel` for small ones.

    The kernel needs the down projection neuron-major (`SparseFFNWeights.down_t`): one copy of W_down per
    layer, made on first use and kept while the layer lives (until its weights change).
    """

    def __init__(self, moe: MoEFeedForward, backend: ExpertBackend = "auto") -> None:
        super().__init__()
        self.moe = moe
        self.kernel = _prepared_kernel(moe, backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        if flat.shape[0] > MAX_TOKENS:
            return self.moe(x)
        moe = self.moe
        experts = moe.router(flat).topk(moe.top_k, dim=-1).indices
        with torch.no_grad():
            moe.expert_load += torch.bincount(experts.reshape(-1), minlength=moe.num_experts).to(
                moe.expert_load.dtype
            )
        return self.kernel(flat, experts).reshape(x.shape)


# Prepared kernels per MoE layer, so repeated generate calls do not copy W_down again; an in-place weight
# update (its tensor version) or another backend prepares anew. Weak keys: a freed model frees its kernels.
_PREPARED: weakref.WeakKeyDictionary[MoEFeedForward, tuple[tuple, ExpertKernel]] = weakref.WeakKeyDictionary()


def _prepared_kernel(moe: MoEFeedForward, backend: ExpertBackend) -> ExpertKernel:
    first = moe.gate_up_proj.weight if moe.gated else moe.up_proj.weight
    down = moe.down_proj.weight
    key = (backend, first.data_ptr(), first._version, down.data_ptr(), down._version, moe.num_experts)
    cached = _PREPARED.get(moe)
    if cached is not None and cached[0] == key:
        return cached[1]
    kernel = ExpertKernel(
        SparseFFNWeights.from_dense(first, down, moe.gated), moe.num_experts, moe.activation, backend
    )
    _PREPARED[moe] = (key, kernel)
    return kernel


def kernel_unsupported(moe: nn.Module) -> str | None:
    """Why a layer keeps the reference MoE path, or None when the kernel path takes it."""
    if not isinstance(moe, MoEFeedForward):
        return f"layer FFN is a {type(moe).__name__}, not an MoEFeedForward"
    if getattr(moe.dense, "activation_threshold", 0.0):
        return "FATReLU (activation_threshold > 0) is not a kernel activation"
    if moe.activation not in ("relu", "relu2", "silu", "gelu", "gelu_tanh"):
        return f"activation {moe.activation!r} has no kernel"
    return None


@contextlib.contextmanager
def moe_kernels_installed(model: Transformer, backend: MoEBackend = "auto") -> Iterator[list[nn.Module]]:
    """Within the block every MoE layer runs small steps through the expert kernels; restored on exit.

    backend "reference" installs nothing (the `MoEFeedForward` path); a layer the kernels cannot take
    (`kernel_unsupported`) keeps its own path too.
    """
    if backend not in ("auto", "native", "triton", "torch", "reference"):
        raise ValueError(f"moe backend must be auto, native, triton, torch or reference, got {backend!r}")
    originals = [block.ffn for block in model.layers]
    installed: list[nn.Module] = []
    try:
        for block, ffn in zip(model.layers, originals, strict=True):
            if backend != "reference" and kernel_unsupported(ffn) is None:
                block.ffn = MoEDecodeFFN(ffn, backend)  # type: ignore[arg-type]
            installed.append(block.ffn)
        yield installed
    finally:
        for block, ffn in zip(model.layers, originals, strict=True):
            block.ffn = ffn
