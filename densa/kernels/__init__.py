"""Sparse-FFN decode kernels: Triton on CUDA, a pure-torch sparse path on CPU, a dense masked reference.

Only this package imports triton, and only lazily (densa.kernels.triton_ffn) when a CUDA path needs it.
See docs/kernels.md for layouts, dispatch and fallback rules.
"""

from densa.kernels.dispatch import (
    SUPPORTED_DTYPES,
    SparseFFNFallbackWarning,
    choose_backend,
    sparse_ffn,
    unsupported_reason,
)
from densa.kernels.reference import ACTIVATIONS, neuron_mask, sparse_ffn_reference
from densa.kernels.torch_sparse import gather_down, sparse_ffn_torch
from densa.kernels.weights import SparseFFNWeights

__all__ = [
    "ACTIVATIONS",
    "SUPPORTED_DTYPES",
    "SparseFFNFallbackWarning",
    "SparseFFNWeights",
    "choose_backend",
    "gather_down",
    "neuron_mask",
    "sparse_ffn",
    "sparse_ffn_reference",
    "sparse_ffn_torch",
    "unsupported_reason",
]
