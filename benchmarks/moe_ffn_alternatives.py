"""Expert-execution strategies the MoE FFN does not use, timed against it by benchmarks/moe_ffn_step.py.

Both run the same routing as `MoEFeedForward.experts_forward` and return the same values (bit for bit on
CPU fp32); only how the expert matmuls are batched differs:

- `mm_loop`: one torch.mm per expert into slices of preallocated outputs, with a hand-written backward
  writing each expert's weight gradient into its block (densa's implementation before grouped_mm);
  dispatch as in densa.sparse_moe.grouped, then a separate combine (router gradient from the dim-wide
  expert outputs).
- `padded_bmm`: every expert padded to the largest load (capacity), one torch.bmm per projection over
  [E, capacity, dim] and autograd's bmm backward; padded rows are zero and never gathered back.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from densa.sparse_moe import MoEFeedForward
from densa.sparse_moe.grouped import Slots, dispatch, sort_slots


class _LoopRows(torch.autograd.Function):
    """out[g, rows of e] = x[rows of e] @ W[g, e]ᵀ, W = weight.view(groups, E, m, dim)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, counts: list[int], groups: int) -> torch.Tensor:
        w = weight.view(groups, len(counts), -1, weight.shape[1])
        out = x.new_empty(groups, x.shape[0], w.shape[2])
        start = 0
        for e, n in enumerate(counts):
            for g in range(groups if n else 0):
                torch.mm(x[start : start + n], w[g, e].t(), out=out[g, start : start + n])
            start += n
        ctx.save_for_backward(x, weight)
        ctx.counts, ctx.groups = counts, groups
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, weight = ctx.saved_tensors
        counts, groups = ctx.counts, ctx.groups
        w = weight.view(groups, len(counts), -1, weight.shape[1])
        grad_out = grad_out.contiguous()
        grad_x, grad_w = torch.empty_like(x), torch.empty_like(weight)
        gw = grad_w.view_as(w)
        start = 0
        for e, n in enumerate(counts):
            rows = slice(start, start + n)
            for g in range(groups):
                if not n:
                    gw[g, e].zero_()
                    continue
                torch.mm(grad_out[g, rows].t(), x[rows], out=gw[g, e])
                if g == 0:
                    torch.mm(grad_out[g, rows], w[g, e], out=grad_x[rows])
                else:
                    grad_x[rows].addmm_(grad_out[g, rows], w[g, e])
            start += n
        return grad_x, grad_w, None, None


class _LoopCols(torch.autograd.Function):
    """out[rows of e] = h[rows of e] @ W[:, block e]ᵀ with W [dim, E·m]."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, weight: torch.Tensor, counts: list[int]) -> torch.Tensor:
        m = h.shape[1]
        out = h.new_empty(h.shape[0], weight.shape[0])
        start = 0
        for e, n in enumerate(counts):
            if n:
                torch.mm(h[start : start + n], weight[:, e * m : (e + 1) * m].t(), out=out[start : start + n])
            start += n
        ctx.save_for_backward(h, weight)
        ctx.counts = counts
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        h, weight = ctx.saved_tensors
        counts, m = ctx.counts, h.shape[1]
        grad_out = grad_out.contiguous()
        grad_h, grad_w = torch.empty_like(h), torch.empty_like(weight)
        start = 0
        for e, n in enumerate(counts):
            rows, cols = slice(start, start + n), slice(e * m, (e + 1) * m)
            if n:
                torch.mm(grad_out[rows], weight[:, cols], out=grad_h[rows])
            grad_w[:, cols] = grad_out[rows].t() @ h[rows] if n else 0.0
            start += n
        return grad_h, grad_w, None


class _Combine(torch.autograd.Function):
    """y[t] = Σ_j out[inverse[t, j]], straight-through in p: ∂L/∂p[t, j] = ⟨∂L/∂y[t], out[slot]⟩."""

    @staticmethod
    def forward(ctx, out: torch.Tensor, p: torch.Tensor, slots: Slots) -> torch.Tensor:
        ctx.save_for_backward(out, slots.order, slots.source)
        return F.embedding_bag(slots.inverse, out, mode="sum")

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        out, order, source = ctx.saved_tensors
        grad_out = grad.index_select(0, source)
        grad_p = torch.empty(out.shape[0], dtype=out.dtype)
        grad_p[order] = torch.linalg.vecdot(grad_out, out)
        return grad_out, grad_p.view(grad.shape[0], -1), None


def mm_loop(moe: MoEFeedForward, x: torch.Tensor, experts: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    slots = sort_slots(experts, moe.num_experts)
    counts = slots.counts.tolist()  # the loop needs the group sizes on the host
    xs = dispatch(x, slots)
    if moe.gated:
        gate, up = _LoopRows.apply(xs, moe.gate_up_proj.weight, counts, 2).unbind(0)
        hidden = moe.act_fn(gate) * up
    else:
        hidden = moe.act_fn(_LoopRows.apply(xs, moe.up_proj.weight, counts, 1)[0])
    return _Combine.apply(_LoopCols.apply(hidden, moe.down_proj.weight, counts), p, slots)


class _PadDispatch(torch.autograd.Function):
    """[E·cap, dim] rows of x (row N: zeros) by `source`; backward sums each token's k slot gradients."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, source: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(inverse)
        return torch.cat([x, x.new_zeros(1, x.shape[1])]).index_select(0, source)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (inverse,) = ctx.saved_tensors
        return F.embedding_bag(inverse, grad.contiguous(), mode="sum"), None, None


class _PadCombine(torch.autograd.Function):
    """y[t] = Σ_j out[inverse[t, j]] (straight-through in p, as densa.sparse_moe.grouped.combine)."""

    @staticmethod
    def forward(ctx, out: torch.Tensor, p: torch.Tensor, source: torch.Tensor, inverse: torch.Tensor):
        ctx.save_for_backward(out, source, inverse)
        return F.embedding_bag(inverse, out, mode="sum")

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        out, source, inverse = ctx.saved_tensors
        grad_out = torch.cat([grad, grad.new_zeros(1, grad.shape[1])]).index_select(0, source)
        grad_p = torch.linalg.vecdot(grad[:, None], out[inverse]) if ctx.needs_input_grad[1] else None
        return grad_out, grad_p, None, None


def padded_bmm(moe: MoEFeedForward, x: torch.Tensor, experts: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    n, dim = x.shape
    num_experts, m = moe.num_experts, moe.expert_size
    slots = sort_slots(experts, num_experts)
    cap = int(slots.counts.max())
    sorted_experts = experts.reshape(-1)[slots.order]
    starts = slots.offsets.long() - slots.counts
    rows = sorted_experts * cap + torch.arange(sorted_experts.numel()) - starts[sorted_experts]
    source = torch.full((num_experts * cap,), n, dtype=torch.long)  # row n of the padded x is zeros
    source[rows] = slots.source
    inverse = rows[slots.inverse]
    xs = _PadDispatch.apply(x, source, inverse).view(num_experts, cap, dim)
    if moe.gated:
        gate, up = moe.gate_up_proj.weight.view(2, num_experts, m, dim).unbind(0)
        hidden = moe.act_fn(torch.bmm(xs, gate.transpose(1, 2))) * torch.bmm(xs, up.transpose(1, 2))
    else:
        hidden = moe.act_fn(torch.bmm(xs, moe.up_proj.weight.view(num_experts, m, dim).transpose(1, 2)))
    down = moe.down_proj.weight.view(dim, num_experts, m).permute(1, 2, 0)  # [E, m, dim]
    out = torch.bmm(hidden, down).view(num_experts * cap, dim)
    return _PadCombine.apply(out, p, source, inverse)


ALTERNATIVES = {"mm loop": mm_loop, "padded bmm": padded_bmm}
