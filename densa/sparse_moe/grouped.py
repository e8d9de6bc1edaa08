"""Grouped matmuls over expert blocks of a dense weight: only experts that received tokens are computed.

Each token's k slots (token t, choice j ↦ slot t·k + j) are sorted by expert, so expert e's tokens are the
rows offsets[e − 1] … offsets[e] of the dispatched input. Expert e's weights are a block of the dense FFN
weight (rows e·m … (e+1)·m of up / gate and of up in gate_up, columns of down); viewed as [E, m, dim]
(no copy), all experts run in one `torch.nn.functional.grouped_mm` call per projection, forward and
backward. Its autograd writes all experts' weight gradient as one full-size tensor (idle experts: zeros),
where a loop of per-expert matmuls costs a Python call per expert, and autograd through per-expert
slices a zero-filled full-size gradient per slice.

Dispatch and combine are gathers only: index_select, and embedding_bag's fused gather-sum over a token's
k slots (index_add / scatter-add with repeated indices is slow on CPU and non-deterministic on GPU).
Padding every expert to a capacity and one torch.bmm was measured slower on CPU (the padding is computed
too; benchmarks/moe_ffn_step.py).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


class Slots(NamedTuple):
    """One layer's top-k slots sorted by expert (stable: tokens keep their order inside an expert)."""

    order: torch.Tensor
    """[N·k] slot ids (t·k + j) in expert order."""
    source: torch.Tensor
    """[N·k] the token of each sorted slot (order // k)."""
    inverse: torch.Tensor
    """[N, k] the position of slot (t, j) in `order`."""
    counts: torch.Tensor
    """[E] tokens per expert (int64)."""
    offsets: torch.Tensor
    """[E] end row of each expert in the sorted slots (int32, `grouped_mm`'s offs)."""


def sort_slots(experts: torch.Tensor, num_experts: int) -> Slots:
    """Slots of `experts` ([N, k] chosen expert ids) grouped by expert; no host sync."""
    n, k = experts.shape
    flat = experts.reshape(-1)
    order = torch.sort(flat, stable=True).indices
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel(), device=order.device)
    counts = torch.bincount(flat, minlength=num_experts)
    return Slots(order, order // k, inverse.view(n, k), counts, counts.cumsum(0).to(torch.int32))


class _Dispatch(torch.autograd.Function):
    """xs[s] = x[source[s]]; backward sums each token's k slot gradients (one fused gather-sum)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, source: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(inverse)
        return x.index_select(0, source)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (inverse,) = ctx.saved_tensors
        return F.embedding_bag(inverse, grad.contiguous(), mode="sum"), None, None


class _Combine(torch.autograd.Function):
    """y[t] = Σ_j w[t, j] · out[inverse[t, j]] with SSD's straight-through weight w = 1 + p − stopgrad(p).

    The forward weight is exactly 1, so no multiply is done (x · 1.0 == x bit for bit); the backward gives
    out the gradient of y gathered back (times 1) and p the gradient ⟨∂L/∂y[t], out[slot]⟩.
    """

    @staticmethod
    def forward(ctx, out: torch.Tensor, p: torch.Tensor, slots: Slots) -> torch.Tensor:
        ctx.save_for_backward(out, slots.order, slots.source)
        ctx.k = slots.inverse.shape[1]
        return F.embedding_bag(slots.inverse, out, mode="sum")

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        out, order, source = ctx.saved_tensors
        grad_out = grad.index_select(0, source)
        grad_p = None
        if ctx.needs_input_grad[1]:
            grad_p = torch.empty(out.shape[0], dtype=out.dtype, device=out.device)
            grad_p[order] = torch.linalg.vecdot(grad_out, out)  # back to (token, j) slot order
            grad_p = grad_p.view(-1, ctx.k)
        return grad_out, grad_p, None


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward makes the gradient contiguous: grouped_mm's backward refuses expanded
    gradients (e.g. from `.sum()`)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous()


def dispatch(x: torch.Tensor, slots: Slots) -> torch.Tensor:
    """[N·k, dim]: the row of x [N, dim] of each slot, in expert order."""
    return _Dispatch.apply(x, slots.source, slots.inverse)


def combine(out: torch.Tensor, p: torch.Tensor, slots: Slots) -> torch.Tensor:
    """[N, dim] sums of each token's k slot outputs (`out` rows in expert order), straight-through in p
    [N, k]."""
    return _Combine.apply(out, p, slots)


def grouped_rows(
    xs: torch.Tensor, weight: torch.Tensor, slots: Slots, groups: int = 1
) -> tuple[torch.Tensor, ...]:
    """`groups` tensors [N·k, m]: each expert's rows of xs times its row block of each of the `groups`
    stacked weights in `weight` ([groups·E·m, dim]; gate_up: gate and up, groups = 2)."""
    w = weight.view(groups, slots.offsets.numel(), -1, weight.shape[1])
    # unbind, not indexing: its backward stacks the parts once instead of zero-filling a full gradient each
    parts = w.unbind(0) if groups > 1 else (w.squeeze(0),)
    return tuple(
        _ContiguousGrad.apply(F.grouped_mm(xs, part.transpose(1, 2), offs=slots.offsets)) for part in parts
    )


def grouped_cols(h: torch.Tensor, weight: torch.Tensor, slots: Slots) -> torch.Tensor:
    """[N·k, dim]: each expert's activations h [N·k, m] times its column block of `weight` ([dim, E·m])."""
    w = weight.view(weight.shape[0], slots.offsets.numel(), -1).permute(1, 2, 0)  # [E, m, dim]
    return _ContiguousGrad.apply(F.grouped_mm(h, w, offs=slots.offsets))
