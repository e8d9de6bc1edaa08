"""MoE expert kernels (densa.kernels.expert_ffn): equal to a per-token loop over the chosen experts, reading
only the chosen experts' rows (the others are NaN here), on the native and the torch path.

Tolerance: fp32, max |kernel − reference| ≤ 1e-5 · max |reference| (summation order differs).
"""

from __future__ import annotations

import pytest
import torch

from densa.kernels import SparseFFNWeights, native_cpu, sparse_ffn_reference
from densa.kernels.expert_ffn import ExpertKernel, expert_rows

needs_native = pytest.mark.skipif(not native_cpu.available(), reason="no C compiler here")
ACT = {"relu": torch.relu, "relu2": lambda v: torch.relu(v) ** 2, "silu": torch.nn.functional.silu}
E, DIM, M = 8, 40, 12  # dim and expert size not multiples of the kernels' 8-row groups


def _weights(gated: bool, seed: int) -> SparseFFNWeights:
    gen = torch.Generator().manual_seed(seed)
    first = torch.randn((2 if gated else 1) * E * M, DIM, generator=gen) / DIM**0.5
    down = torch.randn(DIM, E * M, generator=gen) / (E * M) ** 0.5
    return SparseFFNWeights.from_dense(first, down, gated)


def _loop_reference(x, w: SparseFFNWeights, experts, activation) -> torch.Tensor:
    """Independent of the kernels: token by token, expert by expert, plain matrix-vector products."""
    f, out = w.ffn_dim, torch.zeros(x.shape[0], DIM, dtype=torch.float64)
    first, down_t = w.first.double(), w.down_t.double()
    for n in range(x.shape[0]):
        xn = x[n].double()
        for e in experts[n].tolist():
            rows = slice(e * M, (e + 1) * M)
            h = ACT[activation](first[rows] @ xn)
            if w.gated:
                h = h * (first[f + rows.start : f + rows.stop] @ xn)
            out[n] += h @ down_t[rows]
    return out


def _poison_unselected(w: SparseFFNWeights, experts: torch.Tensor) -> SparseFFNWeights:
    """NaN in every row of every expert no token chose: reading any of them would show in the output."""
    first, down_t = w.first.clone(), w.down_t.clone()
    for e in set(range(E)) - set(experts.unique().tolist()):
        rows = slice(e * M, (e + 1) * M)
        first[rows] = float("nan")
        down_t[rows] = float("nan")
        if w.gated:
            first[w.ffn_dim + rows.start : w.ffn_dim + rows.stop] = float("nan")
    return SparseFFNWeights(first, down_t, w.gated)


def _check(backend, gated, activation, tokens, k, threads):
    w = _weights(gated, seed=tokens * 31 + k)
    gen = torch.Generator().manual_seed(k)
    x = torch.randn(tokens, DIM, generator=gen)
    experts = torch.stack([torch.randperm(E, generator=gen)[:k] for _ in range(tokens)])
    ref = _loop_reference(x, w, experts, activation)
    kernel = ExpertKernel(_poison_unselected(w, experts), E, activation, backend)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out = kernel(x, experts)
    finally:
        torch.set_num_threads(before)
    assert kernel.last_path == backend
    err = (out.double() - ref).abs().max().item()
    assert err <= 1e-5 * ref.abs().max().item(), (err, ref.abs().max().item())


@needs_native
@pytest.mark.parametrize("gated,activation", [(False, "relu"), (False, "relu2"), (True, "silu")])
@pytest.mark.parametrize("tokens,k", [(1, 1), (1, 2), (5, 2), (16, 2), (3, 8)])
@pytest.mark.parametrize("threads", [1, 2])
def test_native_expert_kernel_reads_only_chosen_experts(gated, activation, tokens, k, threads):
    _check("native", gated, activation, tokens, k, threads)


@pytest.mark.parametrize("gated,activation", [(False, "relu"), (True, "silu")])
@pytest.mark.parametrize("tokens,k", [(1, 2), (5, 3)])
def test_torch_expert_path_reads_only_chosen_experts(gated, activation, tokens, k):
    _check("torch", gated, activation, tokens, k, 1)


def test_expert_rows_are_the_triton_active_set():
    """The Triton path runs sparse_ffn with active_idx = expert_rows(one token's experts): that set's
    function is the token's MoE output (checked here through the dense masked reference)."""
    w = _weights(gated=True, seed=5)
    x = torch.randn(1, DIM, generator=torch.Generator().manual_seed(5))
    experts = torch.tensor([[6, 1, 3]])
    rows = expert_rows(experts[0], M)
    assert rows.tolist() == [*range(72, 84), *range(12, 24), *range(36, 48)]
    out = sparse_ffn_reference(x, w, None, rows, "silu")
    ref = _loop_reference(x, w, experts, "silu")
    assert (out.double() - ref).abs().max().item() <= 1e-5 * ref.abs().max().item()


@needs_native
def test_bad_inputs_are_refused():
    w = _weights(gated=False, seed=0)
    kernel = ExpertKernel(w, E, "relu")
    x = torch.randn(2, DIM)
    with pytest.raises(ValueError, match=r"expert ids must lie in \[0, 8\), got 0..8"):
        kernel(x, torch.tensor([[0, 8], [1, 2]]))
    with pytest.raises(ValueError, match=r"experts must be \[2, k\], got \(3, 2\)"):
        kernel(x, torch.zeros(3, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="96 neurons do not split into 7 equal experts"):
        ExpertKernel(w, 7, "relu")
    with pytest.raises(RuntimeError, match="backend='native' needs fp32 CPU weights"):
        ExpertKernel(w.to(dtype=torch.float64), E, "relu", "native")
    with pytest.raises(RuntimeError, match="backend='triton' needs CUDA tensors"):
        ExpertKernel(w, E, "relu", "triton")(x, torch.zeros(2, 1, dtype=torch.int64))


@pytest.mark.gpu
def test_triton_expert_path_on_gpu():
    """fp32 on CUDA: 1e-4 relative, the bound tests/kernels/test_gpu_kernels.py uses for these kernels."""
    w = _weights(gated=True, seed=9).to("cuda")
    x = torch.randn(1, DIM, device="cuda")
    experts = torch.tensor([[2, 5]], device="cuda")
    kernel = ExpertKernel(w, E, "silu")
    out = kernel(x, experts)
    assert kernel.last_path == "triton"
    ref = _loop_reference(x.cpu(), w.to("cpu"), experts.cpu(), "silu")
    assert (out.cpu().double() - ref).abs().max().item() <= 1e-4 * ref.abs().max().item()
