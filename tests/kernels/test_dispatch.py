"""Dispatch rules, fallback warnings (reference result, never a wrong one) and input errors."""

from __future__ import annotations

import os
import warnings

import pytest
import torch
from kernel_cases import Case, build

from densa.kernels import SparseFFNFallbackWarning, choose_backend, sparse_ffn, sparse_ffn_reference


@pytest.fixture
def case() -> tuple[torch.Tensor, object, dict]:
    return build(Case(True, "relu", 2, "thr", 0.6))


def test_cpu_fp32_picks_torch_path_without_warning(case) -> None:
    x, weights, kwargs = case
    assert choose_backend(x, weights) == "torch"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sparse_ffn(x, weights, **kwargs)


def test_float64_falls_back_to_reference_with_warning(case) -> None:
    x, weights, kwargs = case
    w64 = weights.to(dtype=torch.float64)
    with pytest.warns(SparseFFNFallbackWarning, match="float64 is not one of fp16/bf16/fp32"):
        out = sparse_ffn(x.double(), w64, **kwargs)
    assert out.dtype == torch.float64
    assert torch.equal(out, sparse_ffn_reference(x.double(), w64, **kwargs))


def test_integer_input_falls_back_to_reference_with_warning(case) -> None:
    x, weights, kwargs = case
    xi = (x * 4).round().to(torch.int32)
    with pytest.warns(SparseFFNFallbackWarning, match="x dtype torch.int32"):
        out = sparse_ffn(xi, weights, **kwargs)
    expected = sparse_ffn_reference(xi.float(), weights, **kwargs)
    assert out.dtype == torch.float32 and torch.equal(out, expected)


def test_mixed_dtypes_fall_back(case) -> None:
    x, weights, kwargs = case
    with pytest.warns(SparseFFNFallbackWarning, match="differs from the weights"):
        out = sparse_ffn(x.bfloat16(), weights, **kwargs)
    assert out.dtype == torch.float32  # the promoted dtype, computed densely


def test_bf16_on_cpu_uses_torch_path(case) -> None:
    x, weights, kwargs = case
    wb = weights.to(dtype=torch.bfloat16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = sparse_ffn(x.bfloat16(), wb, active_idx=torch.arange(0, 200, 3))
    ref = sparse_ffn_reference(x.double(), wb.to(dtype=torch.float64), active_idx=torch.arange(0, 200, 3))
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.double(), ref, rtol=0.05, atol=0.05)


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="the interpreter allows CPU tensors")
def test_forcing_triton_on_cpu_is_an_error(case) -> None:
    x, weights, kwargs = case
    with pytest.raises(RuntimeError, match="needs CUDA tensors"):
        sparse_ffn(x, weights, backend="triton", **kwargs)


@pytest.mark.parametrize(
    "bad,match",
    [
        ({"activation": "swish"}, "unknown activation 'swish'"),
        ({"thresholds": None}, "give thresholds"),
        ({"active_idx": torch.tensor([0, 200])}, r"must lie in \[0, 200\)"),
        ({"active_idx": torch.tensor([3, 3])}, "must not repeat"),
        ({"active_idx": torch.tensor([1.0])}, "int32/int64"),
        ({"thresholds": torch.zeros(7)}, "scalar or have ffn_dim=200"),
        ({"gated": False}, "prepared with gated=True"),
        ({"backend": "cuda"}, "backend must be"),
    ],
)
def test_bad_calls_raise(case, bad: dict, match: str) -> None:
    x, weights, kwargs = case
    with pytest.raises(ValueError, match=match):
        sparse_ffn(x, weights, **{**kwargs, **bad})


def test_wrong_dim_raises(case) -> None:
    x, weights, kwargs = case
    with pytest.raises(ValueError, match="last dimension must be dim=64"):
        sparse_ffn(x[:, :10], weights, **kwargs)
