"""Grouped matmuls over expert blocks of a dense weight: only experts that received tokens are computed.

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
        grad_x = torch.zeros_like(x) if ctx.needs_input_grad[0] else None
        grad_w = torch.zeros_like(weight) if ctx.needs_input_grad[1] else None
        gw = grad_w.view_as(w) if grad_w is not None else None
        start = 0
        for e, n in enumerate(counts):
            if n:
                rows = slice(start, start + n)
                for g in range(groups):
                    if grad_x is not None:
                        grad_x[rows].addmm_(grad_out[g, rows], w[g, e])
                    if gw is not None:
                        torch.mm(grad_out[g, rows].t(), x[rows], out=gw[g, e])
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
        grad_w = torch.zeros_like(weight) if ctx.needs_input_grad[1] else None
        start = 0
        for e, n in enumerate(counts):
            if n:
                rows, cols = slice(start, start + n), slice(e * m, (e + 1) * m)
                if grad_h is not None:
                    torch.mm(grad_out[rows], weight[:, cols], out=grad_h[rows])
                if grad_w is not None:
                    grad_w[:, cols] = grad_out[rows].t() @ h[rows]
            start += n
        return grad_h, grad_w, None


def grouped_rows(x: torch.Tensor, weight: torch.Tensor, counts: list[int], groups: int = 1) -> torch.Tensor:
    """[groups, N, m]: each expert's tokens times its row blocks of `weight` ([groups·E·m, dim])."""
    return _GroupedRows.apply(x, weight, counts, groups)


def grouped_cols(h: torch.Tensor, weight: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """[N, dim]: each expert's activations [N, m] times its column block of `weight` ([dim, E·m])."""
    return _GroupedCols.apply(h, weight, counts)
