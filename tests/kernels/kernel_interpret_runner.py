"""Run the Triton kernels under TRITON_INTERPRET=1 on CPU and print {case id: error} as JSON.

Runs in its own process (test_triton_interpret.py starts it): the interpreter flag is read when a kernel is
decorated, so setting it inside the main pytest process would leak into every later triton import.
"""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"  # before anything imports triton

import json  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402

import torch  # noqa: E402
from kernel_cases import build, interpret_cases  # noqa: E402

from densa.kernels import sparse_ffn, sparse_ffn_reference  # noqa: E402
from densa.kernels.triton_ffn import KernelConfig, _down_kernel, sparse_ffn_triton  # noqa: E402


def main() -> None:
    results: dict[str, dict] = {"_interpreted": {"ok": type(_down_kernel).__name__ == "InterpretedFunction"}}
    for case in interpret_cases():
        try:
            x, weights, kwargs = build(case)
            ref = sparse_ffn_reference(x, weights, **kwargs)
            if case.split_k is None:
                out = sparse_ffn(x, weights, backend="triton", **kwargs)
            else:
                out = sparse_ffn_triton(x, weights, config=KernelConfig(split_k=case.split_k), **kwargs)
            results[case.id] = {
                "err": float((out - ref).abs().max()) if ref.numel() else 0.0,
                "scale": float(ref.abs().max()),
                "shape_ok": out.shape == ref.shape and out.dtype == ref.dtype,
            }
        except Exception:
            results[case.id] = {"error": traceback.format_exc()}
    x3, weights, kwargs = build(interpret_cases()[0])
    x3 = torch.randn(2, 2, weights.dim)  # [batch, seq, dim] input keeps its leading shape
    out = sparse_ffn(x3, weights, backend="triton", **kwargs)
    results["_3d_input"] = {"ok": out.shape == x3.shape}
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
