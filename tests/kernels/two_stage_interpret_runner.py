"""Run the Triton two-stage attention under TRITON_INTERPRET=1 on CPU against the torch path; print JSON.

Its own process (test_two_stage_attention.py starts it): the interpreter flag must be set before triton
decorates a kernel, and must not leak into the pytest process.
"""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"  # before anything imports triton

import json  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402

import torch  # noqa: E402

from densa.kernels.triton_two_stage import _two_stage_kernel, two_stage_attention_triton  # noqa: E402
from densa.kernels.two_stage_attention import two_stage_attention_torch  # noqa: E402

# (id, batch, q heads, kv heads, queries, head_dim, local keys, memory keys)
CASES = [
    ("gqa_prefill", 2, 4, 2, 5, 32, 19, 37),
    ("decode_one_query", 1, 2, 1, 1, 16, 9, 40),
    ("empty_memory", 1, 2, 2, 3, 16, 7, 0),
    ("odd_head_dim", 1, 2, 1, 18, 24, 33, 5),
]


def build(case: tuple, seed: int = 0) -> tuple:
    _, b, hq, hk, n, d, l1, l2 = case
    gen = torch.Generator().manual_seed(seed)
    q1, q2 = torch.randn(b, hq, n, d, generator=gen), torch.randn(b, hq, n, d, generator=gen)
    k1, v1 = torch.randn(b, hk, l1, d, generator=gen), torch.randn(b, hk, l1, d, generator=gen)
    k2, v2 = torch.randn(b, hk, l2, d, generator=gen), torch.randn(b, hk, l2, d, generator=gen)
    m1 = torch.rand(b, n, l1, generator=gen) < 0.6
    m2 = torch.rand(b, n, l2, generator=gen) < 0.5
    m1[:, 0] = False  # a query row with no local key: memory alone
    if l2:
        m2[:, -1] = False  # and one with no memory key
    return q1, k1, v1, m1, q2, k2, v2, m2, 1 / d**0.5


def main() -> None:
    results: dict[str, dict] = {
        "_interpreted": {"ok": type(_two_stage_kernel).__name__ == "InterpretedFunction"}
    }
    for case in CASES:
        try:
            args = build(case)
            ref_out, ref_lse = two_stage_attention_torch(*args)
            out, lse = two_stage_attention_triton(*args)
            finite = torch.isfinite(ref_lse)
            results[case[0]] = {
                "err": float((out - ref_out).abs().max()),
                "lse_err": float((lse[finite] - ref_lse[finite]).abs().max()) if finite.any() else 0.0,
                "lse_inf_same": bool(torch.equal(torch.isinf(lse), ~finite)),
                "shape_ok": out.shape == ref_out.shape and out.dtype == ref_out.dtype,
            }
        except Exception:
            results[case[0]] = {"error": traceback.format_exc()}
    results["infllm_ordered_model"] = infllm_model_case()
    json.dump(results, sys.stdout)


def infllm_model_case() -> dict:
    """A tiny model under InfLLM with memory_positions="ordered" (memory keys rotated at per-block
    positions before the kernel): the Triton backend against the torch backend, logits."""
    from densa.longctx.infllm import InfLLMConfig, InfLLMContext
    from densa.models import Transformer
    from densa.testing.models import random_tokens, tiny_model_config

    try:
        torch.manual_seed(0)
        model = Transformer(tiny_model_config()).eval()
        ids = random_tokens(model.config, batch=2, seq=30, seed=1)
        opts = dict(n_init=2, n_local=8, block_size=4, repr_topk=2, topk=2, exc_block_size=5)
        with torch.no_grad():
            out = {
                b: InfLLMContext(model, InfLLMConfig(**opts, memory_positions="ordered", backend=b)).forward(
                    ids
                )
                for b in ("torch", "triton")
            }
        shape_ok = out["triton"].shape == (*ids.shape, model.config.vocab_size)
        return {"err": float((out["triton"] - out["torch"]).abs().max()), "shape_ok": shape_ok}
    except Exception:
        return {"error": traceback.format_exc()}


if __name__ == "__main__":
    main()
