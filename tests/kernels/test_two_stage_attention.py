"""Two-stage attention (InfLLM): the log-sum-exp merge against one softmax over the union of keys, and
the Triton kernel (TRITON_INTERPRET=1 subprocess) against the torch path."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from densa.kernels.two_stage_attention import (
    QUERY_CHUNK,
    received_mass,
    stage_attention,
    two_stage_attention,
    two_stage_attention_torch,
    two_stage_attention_with_mass,
)

HERE = Path(__file__).parent


def _direct(q, k, v, mask, scale):
    """Softmax attention written out per head with repeat_interleave (no stage logic)."""
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    logits = (q @ k.transpose(-1, -2)) * scale
    logits = logits.masked_fill(~mask[:, None], -math.inf)
    return logits.softmax(-1) @ v, torch.logsumexp(logits, -1)


def test_merge_equals_softmax_over_the_union_of_keys() -> None:
    gen = torch.Generator().manual_seed(0)
    b, hq, hk, n, d, l1, l2 = 2, 4, 2, 6, 8, 11, 13
    q = torch.randn(b, hq, n, d, generator=gen)
    k, v = torch.randn(b, hk, l1 + l2, d, generator=gen), torch.randn(b, hk, l1 + l2, d, generator=gen)
    mask = torch.rand(b, n, l1 + l2, generator=gen) < 0.7
    mask[:, :, 0] = True  # every row sees a key
    mask[:, 1, :l1] = False  # a row empty in the first stage
    mask[:, 2, l1:] = False  # and one empty in the second
    ref, _ = _direct(q, k, v, mask, 0.3)
    out, lse_1 = two_stage_attention_torch(
        q, k[:, :, :l1], v[:, :, :l1], mask[:, :, :l1], q, k[:, :, l1:], v[:, :, l1:], mask[:, :, l1:], 0.3
    )
    assert (out - ref).abs().max() < 1e-6
    _, direct_lse_1 = _direct(q, k[:, :, :l1], v[:, :, :l1], mask[:, :, :l1], 0.3)
    assert torch.equal(torch.isinf(lse_1), torch.isinf(direct_lse_1))
    finite = torch.isfinite(lse_1)
    assert (lse_1[finite] - direct_lse_1[finite]).abs().max() < 1e-5


def test_empty_memory_stage_and_received_mass() -> None:
    gen = torch.Generator().manual_seed(1)
    q, k, v = (
        torch.randn(1, 2, 3, 4, generator=gen),
        torch.randn(1, 1, 5, 4, generator=gen),
        torch.randn(1, 1, 5, 4, generator=gen),
    )
    mask = torch.ones(1, 3, 5, dtype=torch.bool).tril(diagonal=2)
    empty = torch.zeros(1, 1, 0, 4)
    out, lse = two_stage_attention(
        q, k, v, mask, q, empty, empty, torch.zeros(1, 3, 0, dtype=torch.bool), 0.5
    )
    ref, ref_lse = _direct(q, k, v, mask, 0.5)
    assert (out - ref).abs().max() < 1e-6
    probs = torch.exp((q @ k.transpose(-1, -2)) * 0.5 - ref_lse[..., None]) * mask[:, None]
    assert (received_mass(q, k, mask, lse, 0.5) - probs.sum(dim=(1, 2))[:, None]).abs().max() < 1e-6


def test_chunked_stage_with_mass_over_a_sliding_window() -> None:
    """More queries than one chunk, a banded (sliding-window) mask whose chunks see different key
    columns, a whole chunk with no key and single empty rows: out, lse and the fused received mass
    against the direct softmax."""
    gen = torch.Generator().manual_seed(2)
    b, hq, hk, d, n, window = 2, 6, 2, 8, 2 * QUERY_CHUNK + 37, 50
    length = n + 20
    q = torch.randn(b, hq, n, d, generator=gen)
    k, v = torch.randn(b, hk, length, d, generator=gen), torch.randn(b, hk, length, d, generator=gen)
    dist = torch.arange(n)[:, None] + 20 - torch.arange(length)[None]
    mask = ((dist >= 0) & (dist < window)).expand(b, n, length).clone()
    mask[:, QUERY_CHUNK : 2 * QUERY_CHUNK] = False  # a chunk that sees nothing
    mask[1, 5] = False
    out, lse, mass = stage_attention(q, k, v, mask, 0.4, with_mass=True)
    ref, ref_lse = _direct(q, k, v, mask, 0.4)
    empty = ~mask.any(-1)[:, None].expand(b, hq, n)
    assert (out[empty] == 0).all() and torch.isinf(lse[empty]).all()
    assert (out - ref.nan_to_num()).abs().max() < 1e-5
    assert (lse[~empty] - ref_lse[~empty]).abs().max() < 1e-5
    group = hq // hk
    logits = (q @ k.repeat_interleave(group, 1).transpose(-1, -2)) * 0.4
    probs = (logits - ref_lse[..., None]).exp() * mask[:, None]
    direct_mass = probs.nan_to_num().view(b, hk, group, n, length).sum(dim=(2, 3))
    assert (mass - direct_mass).abs().max() < 1e-4
    assert (received_mass(q, k, mask, lse, 0.4) - direct_mass).abs().max() < 1e-4
    none = torch.zeros(b, n, 0, dtype=torch.bool)
    out2, lse2, mass2 = two_stage_attention_with_mass(q, k, v, mask, q, k[:, :, :0], v[:, :, :0], none, 0.4)
    assert torch.equal(out2, out) and torch.equal(lse2, lse) and torch.equal(mass2, mass)


def test_unknown_backend_is_an_error() -> None:
    x = torch.zeros(1, 1, 1, 2)
    m = torch.ones(1, 1, 1, dtype=torch.bool)
    with pytest.raises(ValueError, match="backend must be auto, torch or triton"):
        two_stage_attention(x, x, x, m, x, x, x, m, 1.0, backend="cuda")  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def interpreted() -> dict[str, dict]:
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run(
        [sys.executable, str(HERE / "two_stage_interpret_runner.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout)


def test_triton_matches_torch_under_the_interpreter(interpreted: dict[str, dict]) -> None:
    assert interpreted.pop("_interpreted")["ok"]
    model_case = interpreted.pop("infllm_ordered_model")
    assert "error" not in model_case, model_case.get("error")
    assert model_case["shape_ok"] and model_case["err"] <= 1e-5, model_case
    assert len(interpreted) == 4
    for case, result in interpreted.items():
        assert "error" not in result, (case, result.get("error"))
        assert result["shape_ok"] and result["lse_inf_same"], (case, result)
        assert result["err"] <= 1e-5 and result["lse_err"] <= 1e-5, (case, result)
