"""Grouped matmuls over expert blocks of a dense weight: only experts that received tokens are computed.

Tokens are dispatched to slots sorted by expert and combined back with gathers only: index_add /
scatter-add with repeated indices is slow on CPU and non-deterministic on GPU.

Tokens arrive sorted by expert (`counts[e]` rows for expert e). Expert e's weights are a block of the dense
FFN weight (rows e·m…(e+1)·m of gate/up, columns of down), so no expert weights are copied. The backward
writes each expert's weight gradient straight into its block of one full-size gradient: autograd through
per-expert slices would instead materialise a zero-filled full-size gradient per slice (E of them), which
costs more than the sparse matmuls save.
"""

from __future__ import annotations

import torch


class _GroupedRows(torch.autograd.Function):
    """out[g, tokens of e] = x[tokens of e] @ W[g, e]ᵀ with W viewed as [groups, E, m, dim]."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, counts: list[int], groups: int) -> torch.Tensor:
        num_experts = len(counts)
        w = weight.view(groups, num_experts, -1, weight.shape[1])
        out = x.new_empty(groups, x.shape[0], w.shape[2])
        start = 0
        for e, n in enumerate(counts):
            if n:
                for g in range(groups):
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
        # Every row of x belongs to one expert, so grad_x is fully written; only idle experts' weight
        # blocks need zeros (cheaper than zero-filling whole buffers first).
        grad_x = torch.empty_like(x) if ctx.needs_input_grad[0] else None
        grad_w = torch.empty_like(weight) if ctx.needs_input_grad[1] else None
        gw = grad_w.view_as(w) if grad_w is not None else None
        start = 0
        for e, n in enumerate(counts):
            rows = slice(start, start + n)
            for g in range(groups):
                if gw is not None:
                    if n:
                        torch.mm(grad_out[g, rows].t(), x[rows], out=gw[g, e])
                    else:
                        gw[g, e].zero_()
                if grad_x is not None and n:
                    if g == 0:
                        torch.mm(grad_out[g, rows], w[g, e], out=grad_x[rows])
                    else:
                        grad_x[rows].addmm_(grad_out[g, rows], w[g, e])
            start += n
        return grad_x, grad_w, None, None


class _GroupedCols(torch.autograd.Function):
    """out[tokens of e] = h[tokens of e] @ W[:, block e]ᵀ with W [dim, E·m] (down_proj)."""

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
        grad_h = torch.empty_like(h) if ctx.needs_input_grad[0] else None
        grad_w = torch.empty_like(weight) if ctx.needs_input_grad[1] else None
        start = 0
        for e, n in enumerate(counts):
            rows, cols = slice(start, start + n), slice(e * m, (e + 1) * m)
            if grad_h is not None and n:
                torch.mm(grad_out[rows], weight[:, cols], out=grad_h[rows])
            if grad_w is not None:
                grad_w[:, cols] = grad_out[rows].t() @ h[rows] if n else 0.0
            start += n
        return grad_h, grad_w, None


class _Dispatch(torch.autograd.Function):
    """xs[s] = x[token(s)] for slots sorted by expert; backward gathers back and sums each token's k slots."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, order: torch.Tensor, inverse: torch.Tensor, k: int) -> torch.Tensor:
        ctx.save_for_backward(inverse)
        ctx.k = k
        return x.index_select(0, order // k)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (inverse,) = ctx.saved_tensors
        per_slot = grad.index_select(0, inverse)
        return per_slot.view(-1, ctx.k, per_slot.shape[1]).sum(1), None, None, None


class _Combine(torch.autograd.Function):
    """y[t] = Σ_j w[t, j] · out[slot (t, j)] with SSD's straight-through weight w = 1 + p − stopgrad(p).

    The forward weight is exactly 1, so no multiply is done (x · 1.0 == x bit for bit); the backward gives
    out the gradient of y gathered back (times 1) and p the gradient ⟨∂L/∂y[t], out[slot]⟩. A gather and
    a sum over k replace scatter-add.
    """

    @staticmethod
    def forward(ctx, out: torch.Tensor, p: torch.Tensor, order: torch.Tensor, inverse: torch.Tensor, k: int):
        ctx.save_for_backward(out, order)
        ctx.k = k
        per_slot = out.index_select(0, inverse)
        return per_slot.view(-1, k, out.shape[1]).sum(1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        out, order = ctx.saved_tensors
        grad_out = grad.index_select(0, order // ctx.k)
        grad_p = None
        if ctx.needs_input_grad[1]:
            grad_p = torch.empty(out.shape[0], dtype=out.dtype, device=out.device)
            grad_p[order] = (grad_out * out).sum(1)  # back to (token, j) slot order
            grad_p = grad_p.view(-1, ctx.k)
        return grad_out, grad_p, None, None, None


def dispatch(x: torch.Tensor, order: torch.Tensor, inverse: torch.Tensor, k: int) -> torch.Tensor:
    """Rows of x [N, dim] for each of the N·k slots, in `order` (slot ids sorted by expert)."""
    return _Dispatch.apply(x, order, inverse, k)


def combine(
    out: torch.Tensor, p: torch.Tensor, order: torch.Tensor, inverse: torch.Tensor, k: int
) -> torch.Tensor:
    """[N, dim] sums of each token's k slot outputs (`out` rows in `order`), straight-through in p [N, k]."""
    return _Combine.apply(out, p, order, inverse, k)


def grouped_rows(x: torch.Tensor, weight: torch.Tensor, counts: list[int], groups: int = 1) -> torch.Tensor:
    """[groups, N, m]: each expert's tokens times its row blocks of `weight` ([groups·E·m, dim])."""
    return _GroupedRows.apply(x, weight, counts, groups)


def grouped_cols(h: torch.Tensor, weight: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """[N, dim]: each expert's activations [N, m] times its column block of `weight` ([dim, E·m])."""
    return _GroupedCols.apply(h, weight, counts)
