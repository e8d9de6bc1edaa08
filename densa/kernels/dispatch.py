"""`sparse_ffn`: one entry point that picks the fastest correct path for the tensors it is given.

Dispatch (backend="auto"):
- CUDA, fp16/bf16/fp32, <= MAX_TOKENS tokens -> Triton kernels (imported lazily, so CPU never loads triton);
- CPU (or CUDA when triton is missing or the batch is large), fp16/bf16/fp32 -> pure-torch sparse path;
- anything else (float64, integer dtypes, x and weights in different dtypes, other device types)
  -> the dense masked reference with a SparseFFNFallbackWarning: slower, never a wrong output.
"""

from __future__ import annotations

import os
import warnings
from types import ModuleType
from typing import Literal

import torch

from densa.kernels.reference import Thresholds, check_inputs, sparse_ffn_reference
from densa.kernels.torch_sparse import sparse_ffn_torch
from densa.kernels.weights import SparseFFNWeights

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
SUPPORTED_DEVICES = ("cpu", "cuda")
TRITON_MAX_TOKENS = 16  # mirrors triton_ffn.MAX_TOKENS without importing triton
Backend = Literal["auto", "triton", "torch", "reference"]


class SparseFFNFallbackWarning(UserWarning):
    """The requested inputs are not supported by a sparse path; the dense reference result is returned."""


def _triton_module() -> ModuleType | None:
    try:
        from densa.kernels import triton_ffn
    except ImportError:
        return None
    return triton_ffn


def unsupported_reason(x: torch.Tensor, weights: SparseFFNWeights) -> str | None:
    """Why no sparse path takes these inputs, or None when one does."""
    if x.device.type not in SUPPORTED_DEVICES:
        return f"device type {x.device.type!r} is not one of {SUPPORTED_DEVICES}"
    for name, dtype in (("x", x.dtype), ("weights", weights.dtype)):
        if dtype not in SUPPORTED_DTYPES:
            return f"{name} dtype {dtype} is not one of fp16/bf16/fp32"
    if x.dtype != weights.dtype:
        return f"x dtype {x.dtype} differs from the weights' {weights.dtype}"
    return None


def choose_backend(x: torch.Tensor, weights: SparseFFNWeights, backend: Backend = "auto") -> str:
    """The path `sparse_ffn` will take (after a fallback warning, if any)."""
    if backend not in ("auto", "triton", "torch", "reference"):
        raise ValueError(f"backend must be auto, triton, torch or reference, got {backend!r}")
    if backend == "reference" or unsupported_reason(x, weights):
        return "reference"
    if backend == "triton":
        if x.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            raise RuntimeError("the Triton backend needs CUDA tensors (or TRITON_INTERPRET=1 for CPU tests)")
        return "triton"
    if backend == "auto" and x.device.type == "cuda" and x.numel() // weights.dim <= TRITON_MAX_TOKENS:
        if _triton_module() is not None:
            return "triton"
        warnings.warn("triton is not importable; using the torch sparse path", SparseFFNFallbackWarning, 3)
    return "torch"


def sparse_ffn(
    x: torch.Tensor,
    weights: SparseFFNWeights,
    thresholds: Thresholds = None,
    active_idx: torch.Tensor | None = None,
    activation: str = "relu",
    gated: bool | None = None,
    backend: Backend = "auto",
    config: object | None = None,
) -> torch.Tensor:
    """Sparse FFN output [..., dim] for x [..., dim] (decode: 1-4 tokens).

    thresholds: scalar or per-neuron [ffn_dim]; neuron i is kept for a token when |act(gate_i)| > t_i
        (gate = up for a plain FFN), the exact rule of densa.sparsity's CETT thresholds.
    active_idx: 1-D int tensor of distinct neuron indices (a predictor's set, shared by the batch); only
        these rows of every weight are read. Both may be given: the threshold then filters the set.
    gated: optional check against `weights.gated`. config: `triton_ffn.KernelConfig` for the Triton path.
    """
    if gated is not None and gated != weights.gated:
        raise ValueError(f"gated={gated} but the weights were prepared with gated={weights.gated}")
    check_inputs(x, weights, thresholds, active_idx, activation)
    if x.device != weights.device:
        raise ValueError(f"x is on {x.device} but the weights are on {weights.device}")
    if active_idx is not None:
        active_idx = active_idx.to(x.device)
    reason = unsupported_reason(x, weights)
    if reason and backend != "reference":
        warnings.warn(f"sparse_ffn: {reason}; using the dense reference path", SparseFFNFallbackWarning, 2)
    chosen = choose_backend(x, weights, backend)
    if chosen == "reference":
        return sparse_ffn_reference(x, weights, thresholds, active_idx, activation)
    if chosen == "torch":
        return sparse_ffn_torch(x, weights, thresholds, active_idx, activation)
    triton_ffn = _triton_module()
    if triton_ffn is None:
        raise RuntimeError("backend='triton' was requested but triton cannot be imported")
    return triton_ffn.sparse_ffn_triton(x, weights, thresholds, active_idx, activation, config)  # type: ignore[arg-type]
