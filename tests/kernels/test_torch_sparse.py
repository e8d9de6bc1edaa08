"""CPU torch sparse path vs the dense masked reference, and the reference vs the model's FeedForward."""

from __future__ import annotations

import pytest
import torch
from kernel_cases import Case, build, gap_threshold

from densa.kernels import (
    ACTIVATIONS,
    SparseFFNWeights,
    neuron_mask,
    sparse_ffn,
    sparse_ffn_reference,
    torch_sparse,
)
from densa.kernels.torch_sparse import sparse_ffn_torch
from densa.models.activations import ACTIVATION_FUNCTIONS
from densa.models.ffn import FeedForward
from densa.testing import tiny_model_config

CASES = [
    Case(gated, act, batch, mode, s)
    for gated in (True, False)
    for act in ("relu", "relu2", "silu", "gelu")
    for batch in (1, 4)
    for mode, s in (
        ("thr", 0.0),
        ("thr", 0.5),
        ("thr", 0.95),
        ("thr", 1.0),
        ("idx", 0.2),
        ("idx", 0.8),
        ("idx", 1.0),
    )
] + [Case(True, "relu", 4, "both", 0.5), Case(False, "gelu_tanh", 2, "thr_vec", 0.5)]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_torch_sparse_matches_reference(case: Case) -> None:
    x, weights, kwargs = build(case)
    ref = sparse_ffn_reference(x, weights, **kwargs)
    out = sparse_ffn_torch(x, weights, **kwargs)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    assert (out - ref).abs().max() <= 1e-5


@pytest.mark.parametrize("batch", [1, 3])
def test_chunked_gathers_match_reference(monkeypatch: pytest.MonkeyPatch, batch: int) -> None:
    monkeypatch.setattr(torch_sparse, "GATHER_CHUNK_BYTES", 16 * 64 * 4)  # 16-row chunks: the loop runs
    x, weights, kwargs = build(Case(True, "silu", batch, "idx", 0.7))
    out = sparse_ffn_torch(x, weights, **kwargs)
    assert (out - sparse_ffn_reference(x, weights, **kwargs)).abs().max() <= 1e-5


def test_dispatcher_uses_torch_path_on_cpu_and_keeps_leading_shape() -> None:
    x, weights, kwargs = build(Case(True, "silu", 4, "thr", 0.8))
    x3 = x.reshape(2, 2, -1)
    out = sparse_ffn(x3, weights, **kwargs)
    assert out.shape == x3.shape
    torch.testing.assert_close(out, sparse_ffn_reference(x3, weights, **kwargs), rtol=0, atol=1e-5)


def test_masks_follow_the_threshold_exactly() -> None:
    x, weights, kwargs = build(Case(True, "relu2", 4, "thr", 0.7))
    act_gate = ACTIVATIONS["relu2"](x @ weights.gate.T)
    mask = neuron_mask(act_gate, kwargs["thresholds"], None)
    assert torch.equal(mask, act_gate.abs() > kwargs["thresholds"])
    assert 0.6 < 1 - mask.float().mean() < 0.8
    # A union row that token 0 does not keep must not leak into token 0's output.
    h_zero = sparse_ffn_torch(x[:1], weights, **kwargs)
    torch.testing.assert_close(sparse_ffn_torch(x, weights, **kwargs)[:1], h_zero, rtol=0, atol=1e-5)


def test_activations_match_the_models() -> None:
    v = torch.linspace(-6, 6, 1001)
    assert set(ACTIVATIONS) == set(ACTIVATION_FUNCTIONS)
    for name, fn in ACTIVATIONS.items():
        torch.testing.assert_close(fn(v), ACTIVATION_FUNCTIONS[name](v), rtol=0, atol=0)


@pytest.mark.parametrize("gated,activation", [(True, "silu"), (False, "relu2")])
def test_all_active_equals_the_model_ffn(gated: bool, activation: str) -> None:
    cfg = tiny_model_config(dim=64, ffn_dim=176, gated=gated, activation=activation)
    ffn = FeedForward(cfg).eval()
    first = ffn.gate_up_proj.weight if gated else ffn.up_proj.weight
    weights = SparseFFNWeights.from_dense(first, ffn.down_proj.weight, gated=gated)
    x = torch.randn(3, 64)
    with torch.no_grad():
        expected = ffn(x)
    for out in (
        sparse_ffn(x, weights, thresholds=-1.0, activation=activation),
        sparse_ffn(x, weights, active_idx=torch.arange(176), activation=activation),
    ):
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)


def test_from_dense_layout() -> None:
    gate_up, down = torch.randn(2 * 48, 32), torch.randn(32, 48)
    w = SparseFFNWeights.from_dense(gate_up, down, gated=True)
    assert torch.equal(w.down_t, down.T) and w.down_t.is_contiguous()
    assert torch.equal(w.gate, gate_up[:48]) and torch.equal(w.up, gate_up[48:])
    assert w.first.data_ptr() == gate_up.data_ptr()  # shared, not copied
    assert (w.dim, w.ffn_dim) == (32, 48)
    plain = SparseFFNWeights.from_dense(gate_up[:48], down, gated=False)
    assert plain.up is None and torch.equal(plain.gate, gate_up[:48])
    with pytest.raises(ValueError, match=r"gate_up weight \[2\*ffn_dim, dim\] should be \(96, 32\)"):
        SparseFFNWeights.from_dense(gate_up[:48], down, gated=True)
    with pytest.raises(ValueError, match="differ in dtype"):
        SparseFFNWeights.from_dense(gate_up, down.double(), gated=True)


def test_gap_threshold_hits_target() -> None:
    values = torch.rand(10_000)
    t = gap_threshold(values, 0.9)
    assert abs((values <= t).float().mean().item() - 0.9) < 0.06
