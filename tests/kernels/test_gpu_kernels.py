"""Triton kernels on CUDA (skipped without a GPU): auto dispatch picks them and they match the reference."""

from __future__ import annotations

import pytest
import torch
from kernel_cases import Case, build

from densa.kernels import choose_backend, sparse_ffn, sparse_ffn_reference

pytestmark = pytest.mark.gpu

CASES = [Case(g, a, b, m, s, dim=512, ffn_dim=1376) for g in (True, False) for a in ("relu", "silu")
         for b in (1, 4) for m, s in (("thr", 0.9), ("idx", 0.8), ("thr", 1.0))]  # fmt: skip
DTYPES = {"fp32": (torch.float32, 1e-4), "fp16": (torch.float16, 2e-2), "bf16": (torch.bfloat16, 6e-2)}


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_triton_on_cuda_matches_reference(case: Case, dtype_name: str) -> None:
    dtype, tol = DTYPES[dtype_name]
    x, weights, kwargs = build(case)
    if "active_idx" in kwargs:
        kwargs["active_idx"] = kwargs["active_idx"].cuda()
    xc, wc = x.cuda().to(dtype), weights.to("cuda", dtype)
    assert choose_backend(xc, wc) == "triton"
    out = sparse_ffn(xc, wc, **kwargs)
    # Reference in fp64 on the same (rounded) weights; thresholds sit in gaps, so masks agree.
    ref = sparse_ffn_reference(xc.double(), wc.to(dtype=torch.float64), **kwargs)
    assert out.dtype == dtype and out.shape == ref.shape
    torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol)
