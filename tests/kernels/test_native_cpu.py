"""Native CPU gather kernels: equal to torch products, built into a cache, fall back when unavailable."""

from __future__ import annotations

import pytest
import torch

from densa.kernels import SparseFFNWeights, native_cpu, sparse_ffn, sparse_ffn_reference

needs_native = pytest.mark.skipif(not native_cpu.available(), reason="no C compiler here (fallback tested)")


@pytest.fixture
def fresh_state(monkeypatch, tmp_path):
    """A clean build state (restored afterwards) with its own cache folder."""
    monkeypatch.setattr(native_cpu, "_lib", None)
    monkeypatch.setattr(native_cpu, "_tried", False)
    monkeypatch.setenv("DENSA_CACHE", str(tmp_path))
    return tmp_path


@needs_native
@pytest.mark.parametrize("tokens", [1, 3])
@pytest.mark.parametrize("k", [0, 1, 7, 8, 9, 61])
@pytest.mark.parametrize("threads", [1, 2])
def test_gather_kernels_equal_torch_products(tokens, k, threads):
    gen = torch.Generator().manual_seed(k * 10 + tokens)
    full = torch.randn(300, 72, generator=gen)
    weight = full[:, :50]  # row stride 72 > row length 50: the kernels must honour the stride
    idx = torch.randperm(300, generator=gen)[:k]  # unsorted on purpose
    x = torch.randn(tokens, 50, generator=gen)
    h = torch.randn(tokens, k, generator=gen)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        dot = native_cpu.gather_dot(x, weight, idx)
        axpy = native_cpu.gather_axpy(h, idx, weight)
    finally:
        torch.set_num_threads(before)
    torch.testing.assert_close(dot, x @ weight[idx].T, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(axpy, h @ weight[idx], rtol=1e-5, atol=1e-5)


@needs_native
@pytest.mark.parametrize("gated", [False, True])
def test_sparse_ffn_through_native_kernels_matches_reference(gated):
    gen = torch.Generator().manual_seed(1)
    dim, ffn_dim = 64, 256
    first = torch.randn((2 if gated else 1) * ffn_dim, dim, generator=gen) / 8
    weights = SparseFFNWeights.from_dense(first, torch.randn(dim, ffn_dim, generator=gen) / 16, gated)
    x = torch.randn(2, 1, dim, generator=gen)
    idx = torch.randperm(ffn_dim, generator=gen)[:40].sort().values
    for kwargs in ({"thresholds": 0.05}, {"active_idx": idx}, {"thresholds": 0.05, "active_idx": idx}):
        ref = sparse_ffn_reference(x, weights, activation="relu2", **kwargs)
        out = sparse_ffn(x, weights, activation="relu2", backend="torch", **kwargs)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


@needs_native
def test_build_is_cached_and_atomic(fresh_state):
    assert native_cpu.available()
    built = list((fresh_state / "kernels").iterdir())
    assert len(built) == 1 and built[0].suffix == ".so"  # no temp file left behind
    mtime = built[0].stat().st_mtime_ns
    assert native_cpu._build(native_cpu._compiler()) == built[0]  # second build: the cached file
    assert built[0].stat().st_mtime_ns == mtime


def test_missing_compiler_falls_back_to_torch_with_one_warning(fresh_state, monkeypatch):
    monkeypatch.setenv("CC", str(fresh_state / "no-such-cc"))
    with pytest.warns(native_cpu.NativeKernelWarning, match="torch gather path"):
        assert not native_cpu.available()
    gen = torch.Generator().manual_seed(2)
    weights = SparseFFNWeights.from_dense(
        torch.randn(128, 32, generator=gen), torch.randn(32, 128, generator=gen), gated=False
    )
    x = torch.randn(1, 32, generator=gen)
    out = sparse_ffn(x, weights, thresholds=0.0, activation="relu", backend="torch")
    torch.testing.assert_close(out, sparse_ffn_reference(x, weights, thresholds=0.0, activation="relu"))


@needs_native
def test_disabled_block_uses_the_torch_path(monkeypatch):
    calls = []
    monkeypatch.setattr(native_cpu, "gather_dot", lambda *a: calls.append(a))
    x, weight, idx = torch.randn(1, 16), torch.randn(40, 16), torch.tensor([3, 9])
    from densa.kernels.torch_sparse import gather_matmul

    with native_cpu.disabled():
        torch.testing.assert_close(gather_matmul(x, weight, idx), x @ weight[idx].T)
    assert calls == [] and native_cpu.available()
    gather_matmul(x, weight, idx)
    assert len(calls) == 1


def test_switched_off_by_environment(fresh_state, monkeypatch, recwarn):
    monkeypatch.setenv("DENSA_NATIVE_KERNELS", "0")
    assert not native_cpu.available()
    assert not [w for w in recwarn if issubclass(w.category, native_cpu.NativeKernelWarning)]
    assert not (fresh_state / "kernels").exists()


@needs_native
@pytest.mark.parametrize("activation", sorted(native_cpu.FUSED_ACTIVATIONS))
@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize("threads", [1, 2])
def test_fused_threshold_ffn_equals_reference(activation, gated, threads):
    gen = torch.Generator().manual_seed(3)
    dim, ffn_dim = 48, 203  # ffn_dim not a multiple of the 8-row group nor of the thread split
    first = torch.randn((2 if gated else 1) * ffn_dim, dim, generator=gen) / 6
    weights = SparseFFNWeights.from_dense(first, torch.randn(dim, ffn_dim, generator=gen) / 14, gated)
    t = torch.rand(ffn_dim, generator=gen) * 0.3  # per-neuron thresholds, some neurons kept, some not
    x = torch.randn(1, dim, generator=gen)
    fused = native_cpu.ThresholdFFN(weights.gate, weights.up, weights.down_t, t, activation)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out = fused(x[0])
    finally:
        torch.set_num_threads(before)
    ref = sparse_ffn_reference(x, weights, thresholds=t, activation=activation)[0]
    act = {"relu": torch.relu, "relu2": lambda v: torch.relu(v).square(), "silu": torch.nn.functional.silu}
    expected_active = int((act[activation](x @ weights.gate.T).abs() > t).sum())
    assert 0 < expected_active < ffn_dim
    assert fused.last_active == expected_active
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


@needs_native
def test_fused_threshold_ffn_rejects_what_it_cannot_compute():
    w = SparseFFNWeights.from_dense(torch.randn(64, 16), torch.randn(16, 64), gated=False)
    with pytest.raises(ValueError, match="fused activations are"):
        native_cpu.ThresholdFFN(w.gate, w.up, w.down_t, torch.zeros(64), "gelu")
    w64 = w.to(dtype=torch.float64)
    with pytest.raises(ValueError, match="fp32 CPU weights"):
        native_cpu.ThresholdFFN(w64.gate, w64.up, w64.down_t, torch.zeros(64), "relu")
    fused = native_cpu.ThresholdFFN(w.gate, w.up, w.down_t, torch.zeros(64), "relu")
    with pytest.raises(ValueError, match="fp32 CPU vector of 16"):
        fused(torch.zeros(15))


@needs_native
def test_engine_decode_takes_the_fused_call():
    from densa.inference.sparse_path import SparseDecodeFFN
    from densa.models.config import ModelConfig
    from densa.models.transformer import Transformer

    torch.manual_seed(0)
    model = Transformer(
        ModelConfig(vocab_size=32, dim=16, n_layers=1, n_heads=2, ffn_dim=64, activation="relu")
    )
    ffn = model.layers[0].ffn
    wrapper = SparseDecodeFFN(ffn, torch.zeros(64))
    assert wrapper.fused is not None
    x = torch.randn(1, 1, 16)
    torch.testing.assert_close(wrapper(x), ffn(x), rtol=1e-5, atol=1e-6)
    assert 0 < wrapper.fused.last_active < 64
    assert SparseDecodeFFN(ffn, torch.zeros(64), backend="reference").fused is None


@needs_native
@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize("threads", [1, 2])
def test_fused_predicted_ffn_reads_the_predicted_rows_only(gated, threads):
    gen = torch.Generator().manual_seed(4)
    dim, ffn_dim, rank = 40, 157, 6
    first = torch.randn((2 if gated else 1) * ffn_dim, dim, generator=gen) / 6
    weights = SparseFFNWeights.from_dense(first, torch.randn(dim, ffn_dim, generator=gen) / 12, gated)
    p_down, p_up = torch.randn(rank, dim, generator=gen), torch.randn(ffn_dim, rank, generator=gen)
    t = torch.full((ffn_dim,), 0.05)
    x = torch.randn(1, dim, generator=gen)
    fused = native_cpu.PredictedFFN(p_down, p_up, weights.gate, weights.up, weights.down_t, t, "relu2")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out = fused(x[0])
    finally:
        torch.set_num_threads(before)
    predicted = ((x @ p_down.T @ p_up.T)[0] >= 0).nonzero().squeeze(1)
    assert 0 < predicted.numel() < ffn_dim and fused.last_read == predicted.numel()
    ref = sparse_ffn_reference(x, weights, thresholds=t, active_idx=predicted, activation="relu2")[0]
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"predictor weights must be \[rank, 40\] and \[157, rank\]"):
        native_cpu.PredictedFFN(p_down, p_up.T, weights.gate, weights.up, weights.down_t, t, "relu2")
