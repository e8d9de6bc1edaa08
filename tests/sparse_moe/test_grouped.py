"""Grouped expert matmuls (densa.sparse_moe.grouped) against direct computations: a float64 dense-masked
FFN, per-expert torch.mm loops, and hand-picked expert loads (idle experts, one expert taking every token)."""

import copy

import pytest
import torch

from densa.models import ModelConfig
from densa.models.ffn import FeedForward
from densa.sparse_moe import CentroidRouter, MoEFeedForward, cluster_ffn
from densa.sparse_moe.grouped import (
    _fits_grouped_mm,
    dispatch,
    grouped_cols,
    grouped_cols_combine,
    grouped_rows,
    sort_slots,
)
from densa.sparse_moe.moe_ffn import dense_masked_reference


def make_moe(gated: bool, activation: str, ffn_dim: int = 512, experts: int = 16) -> MoEFeedForward:
    torch.manual_seed(0)
    config = ModelConfig(
        vocab_size=8, dim=64, n_layers=1, n_heads=4, ffn_dim=ffn_dim, gated=gated, activation=activation
    )
    ffn = FeedForward(config)
    with torch.no_grad():
        for p in ffn.parameters():
            p.normal_(0.0, 0.1)
    return MoEFeedForward(ffn, experts, 4, CentroidRouter.from_clustering(cluster_ffn(ffn, experts)))


def grads(moe: MoEFeedForward, x: torch.Tensor, out: torch.Tensor, grad_out: torch.Tensor) -> list:
    params = [*moe.dense.parameters(), *moe.router.parameters()]
    out.backward(grad_out)
    got = [out.detach()] + [p.grad.clone() for p in params] + [x.grad.clone()]
    for t in [*params, x]:
        t.grad = None
    return got


# experts of 32 neurons (grouped_mm), and of 6 (24-byte strides: the per-expert mm fallback)
@pytest.mark.parametrize(
    ("gated", "activation", "ffn_dim"), [(False, "relu", 512), (True, "silu", 512), (True, "silu", 96)]
)
def test_fp32_moe_matches_float64_dense_masked_ffn(gated, activation, ffn_dim):
    """Output, every weight gradient, the router's gradient (through p) and the input gradient at k/E =
    1/4 over 300 tokens: within 2e-6 of the largest value (fp32 rounding: 1.6e-7 … 4.7e-7 measured)."""
    moe = make_moe(gated, activation, ffn_dim)
    x = torch.randn(300, 64, requires_grad=True)
    grad_out = torch.randn(300, 64)
    got = grads(moe, x, moe(x), grad_out)

    ref_moe = copy.deepcopy(moe).double()
    x64 = x.detach().double().requires_grad_()
    top, experts = ref_moe.router(x64.detach()).topk(4, dim=-1)
    p = torch.softmax(top, dim=-1)
    ref = dense_masked_reference(ref_moe, x64, experts, (p - p.detach()) + 1.0)
    want = grads(ref_moe, x64, ref, grad_out)
    assert len(got) == len(want) == 5  # out, up or gate_up, down, router, x
    for a, b in zip(got, want, strict=True):
        assert (a.double() - b).abs().max() <= 2e-6 * b.abs().max()
    assert got[-2].abs().max() > 1.0  # the router really gets a gradient


def _loop_reference(xs: torch.Tensor, weight: torch.Tensor, counts: list[int], cols: bool) -> torch.Tensor:
    """Per-expert torch.mm over contiguous row blocks (rows: weight [E·m, d]; cols: weight [d, E·m])."""
    m = (weight.shape[1] if cols else weight.shape[0]) // len(counts)
    outs, start = [], 0
    for e, n in enumerate(counts):
        block = weight[:, e * m : (e + 1) * m] if cols else weight[e * m : (e + 1) * m]
        outs.append(xs[start : start + n] @ block.t())
        start += n
    return torch.cat(outs)


@pytest.mark.parametrize(("dim", "m", "fits"), [(8, 4, True), (6, 3, False)])
def test_grouped_rows_and_cols_equal_per_expert_matmuls_with_idle_and_full_experts(dim, m, fits):
    """grouped_mm where the strides are 16-byte multiples (dim, m = 8, 4 in fp32), else the mm fallback."""
    # Expert 1 takes every token's first slot, experts 0, 2 and 5 get none; k = 2, E = 6.
    experts = torch.tensor([[1, 3], [1, 4], [1, 3], [1, 3], [1, 4]])
    slots = sort_slots(experts, 6)
    assert slots.counts.tolist() == [0, 5, 0, 3, 2, 0]
    assert slots.offsets.tolist() == [0, 5, 5, 8, 10, 10]
    assert slots.source.tolist() == [0, 1, 2, 3, 4, 0, 2, 3, 1, 4]
    counts = slots.counts.tolist()
    torch.manual_seed(1)
    xs = torch.randn(10, dim, requires_grad=True)
    w_rows = torch.randn(2 * 6 * m, dim, requires_grad=True)  # gate_up: [2·E·m, dim]
    w_cols = torch.randn(dim, 6 * m, requires_grad=True)
    assert _fits_grouped_mm(dim, m, xs, w_rows, w_cols) == fits
    gate, up = grouped_rows(xs, w_rows, slots, groups=2)
    out = grouped_cols(gate * up, w_cols, slots)
    # .sum() hands grouped_mm an expanded gradient, which it refuses unless made contiguous first
    out.sum().backward()
    got = [out.detach(), xs.grad, w_rows.grad, w_cols.grad]

    xs2, w_rows2, w_cols2 = (t.detach().clone().requires_grad_() for t in (xs, w_rows, w_cols))
    gate2 = _loop_reference(xs2, w_rows2[: 6 * m], counts, cols=False)
    up2 = _loop_reference(xs2, w_rows2[6 * m :], counts, cols=False)
    out2 = _loop_reference(gate2 * up2, w_cols2, counts, cols=True)
    out2.sum().backward()
    for a, b in zip(got, [out2.detach(), xs2.grad, w_rows2.grad, w_cols2.grad], strict=True):
        assert (a - b).abs().max() <= 1e-5
    for e in (0, 2, 5):  # idle experts
        assert w_rows.grad[e * m : (e + 1) * m].abs().max() == 0  # gate rows
        assert w_rows.grad[(6 + e) * m : (7 + e) * m].abs().max() == 0  # up rows
        assert w_cols.grad[:, e * m : (e + 1) * m].abs().max() == 0
    assert w_cols.grad[:, m : 2 * m].abs().min() > 0  # expert 1 (every token) is trained


@pytest.mark.parametrize("dim", [4, 2])  # grouped_mm, and the mm fallback (8-byte strides)
def test_dispatch_and_cols_combine_gather_and_sum_each_tokens_slots(dim):
    experts = torch.tensor([[2, 0], [0, 1], [2, 1]])
    slots = sort_slots(experts, 3)
    x = torch.arange(3.0 * dim).view(3, dim).requires_grad_()
    xs = dispatch(x, slots)
    assert torch.equal(xs, x.detach()[[0, 1, 1, 2, 0, 2]])  # experts 0, 0, 1, 1, 2, 2
    # Expert e's column block of the down weight is (e + 1)·I: slot (t, j) outputs (e_tj + 1)·x[t].
    weight = torch.cat([(e + 1) * torch.eye(dim) for e in range(3)], dim=1).requires_grad_()
    p = torch.tensor([[0.7, 0.3], [0.6, 0.4], [0.5, 0.5]], requires_grad=True)
    y = grouped_cols_combine(xs, weight, p, slots)
    scale = (experts + 1).float()  # [N, k]
    assert torch.equal(y, scale.sum(1, keepdim=True) * x)  # forward weight exactly 1
    grad_y = torch.arange(1.0, 3 * dim + 1).view(3, dim)
    y.backward(grad_y)
    # ∂L/∂p[t, j] = ⟨∂L/∂y[t], output of slot (t, j)⟩; ∂L/∂x[t] = Σ_j (e_tj + 1)·∂L/∂y[t]
    assert torch.equal(p.grad, scale * (grad_y * x.detach()).sum(1, keepdim=True))
    assert torch.equal(x.grad, scale.sum(1, keepdim=True) * grad_y)
    # down weight block e: Σ over its slots of ∂L/∂y[t] ⊗ x[t]
    want = torch.zeros(dim, 3 * dim)
    for t in range(3):
        for e in experts[t].tolist():
            want[:, dim * e : dim * (e + 1)] += torch.outer(grad_y[t], x.detach()[t])
    assert torch.equal(weight.grad, want)


def test_bitwise_deterministic():
    moe = make_moe(True, "silu")
    x = torch.randn(200, 64, requires_grad=True)
    grad_out = torch.randn(200, 64)
    first, second = (grads(moe, x, moe(x), grad_out) for _ in range(2))
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


def test_torch_compile_traces_around_grouped_mm():
    """Dynamo's fake-tensor run of grouped_mm takes bf16 only in torch 2.13: the fp32 MoE must still compile
    (its grouped matmuls run eagerly) and give the eager values."""
    moe = make_moe(True, "silu", ffn_dim=128, experts=8)
    x = torch.randn(40, 64, requires_grad=True)
    grad_out = torch.randn(40, 64)
    want = grads(moe, x, moe(x), grad_out)
    torch._dynamo.reset()
    compiled = torch.compile(moe, backend="eager")
    got = grads(moe, x, compiled(x), grad_out)
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
