"""Grouped matmuls over expert blocks of a dense weight: only experts that received tokens are computed.

Each token's k slots (token t, choice j ↦ slot t·k + j) are sorted by expert, so expert e's tokens are the
rows offsets[e − 1] … offsets[e] of the dispatched input. Expert e's weights are a block of the dense FFN
weight (rows e·m … (e+1)·m of up, or of gate and of up in gate_up; columns of down); viewed as
[E, m, dim] (no copy), all experts run in one `torch.nn.functional.grouped_mm` call per projection,
forward and backward, and each weight gradient is one full-size tensor (idle experts: zeros). A loop of
per-expert matmuls costs a Python call per expert; autograd through per-expert slices, a zero-filled
full-size gradient per slice.

Dispatch and combine are gathers only: index_select, and embedding_bag's fused gather-sum over a token's
k slots (index_add / scatter-add with repeated indices is slow on CPU and non-deterministic on GPU). The
down projection and the combine are one autograd node, so the router's gradient is read off the m-wide
hidden gradient instead of the dim-wide expert outputs. benchmarks/moe_ffn_step.py times the per-expert
loop and capacity-padded torch.bmm against this.
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


@torch.compiler.disable  # reads data pointers, which compile-time fake tensors lack
def _fits_grouped_mm(dim: int, m: int, *tensors: torch.Tensor) -> bool:
    """Whether grouped_mm takes these operands (forward and backward): it wants every leading stride (here
    dim and m) a multiple of 16 bytes and 16-byte aligned data."""
    step = 16 // tensors[0].element_size()
    return dim % step == 0 and m % step == 0 and all(t.data_ptr() % 16 == 0 for t in tensors)


@torch.compiler.disable  # torch 2.13's compile-time (meta) grouped_mm takes bf16 only; eager takes fp32 too
def _gmm(a: torch.Tensor, b: torch.Tensor, slots: Slots, fits: bool) -> torch.Tensor:
    """F.grouped_mm(a, b, offs=slots.offsets): a [S, K] by expert rows × b [E, K, n] → [S, n], or
    a [n, S] × b [S, K], both split by expert along S → [E, n, K]. Where grouped_mm refuses the strides
    (see _fits_grouped_mm), the same per expert with torch.mm: slower (a host sync for the group sizes, and
    under autograd a zero-filled gradient per expert slice of b) but any shape."""
    if fits:
        return F.grouped_mm(a, b, offs=slots.offsets)
    ends = slots.offsets.tolist()
    bounds = list(zip([0, *ends[:-1]], ends, strict=True))
    if b.dim() == 3:
        return torch.cat([a[s:e] @ b[i] for i, (s, e) in enumerate(bounds)])
    return torch.stack([a[:, s:e] @ b[s:e] for s, e in bounds])


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


class _ColsCombine(torch.autograd.Function):
    """y[t] = Σ_j w[t, j] · out[slot (t, j)], out = each expert's h rows times its column block of the
    down weight, with SSD's straight-through weight w = 1 + p − stopgrad(p).

    The forward weight is exactly 1, so no multiply is done (x · 1.0 == x bit for bit). The backward gives
    out the gradient of y gathered back (times 1), and p the gradient ⟨∂L/∂y[t], out[slot]⟩ computed as
    ⟨∂L/∂h[slot], h[slot]⟩ (the same number: out is linear in h), which is m rather than dim wide and
    needs no saved `out`.
    """

    @staticmethod
    def forward(ctx, h: torch.Tensor, weight: torch.Tensor, p: torch.Tensor, slots: Slots) -> torch.Tensor:
        ctx.fits = _fits_grouped_mm(weight.shape[0], h.shape[1], h, weight)
        out = _gmm(h, _cols_view(weight, slots), slots, ctx.fits)
        ctx.save_for_backward(h, weight, *slots)
        return F.embedding_bag(slots.inverse, out, mode="sum")

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        h, weight, *saved = ctx.saved_tensors
        slots = Slots(*saved)
        w = _cols_view(weight, slots)
        grad_out = grad.contiguous().index_select(0, slots.source)
        grad_h = _gmm(grad_out, w.transpose(1, 2), slots, ctx.fits)
        grad_w = grad_p = None
        if ctx.needs_input_grad[1]:  # [E, dim, m] → the [dim, E·m] layout of the down weight
            grad_w = _gmm(grad_out.t(), h, slots, ctx.fits).transpose(0, 1).reshape_as(weight)
        if ctx.needs_input_grad[2]:
            grad_p = torch.empty(h.shape[0], dtype=h.dtype, device=h.device)
            grad_p[slots.order] = torch.linalg.vecdot(grad_h, h)  # back to (token, j) slot order
            grad_p = grad_p.view_as(slots.inverse)
        return grad_h, grad_w, grad_p, None


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


def grouped_rows(
    xs: torch.Tensor, weight: torch.Tensor, slots: Slots, groups: int = 1
) -> tuple[torch.Tensor, ...]:
    """`groups` tensors [N·k, m]: each expert's rows of xs times its row block of each of the `groups`
    stacked weights in `weight` ([groups·E·m, dim]; gate_up: gate and up, groups = 2)."""
    w = weight.view(groups, slots.offsets.numel(), -1, weight.shape[1])
    fits = _fits_grouped_mm(w.shape[3], w.shape[2], xs, weight)
    # unbind, not indexing: its backward stacks the parts once instead of zero-filling a full gradient each
    parts = w.unbind(0) if groups > 1 else (w.squeeze(0),)
    return tuple(_ContiguousGrad.apply(_gmm(xs, part.transpose(1, 2), slots, fits)) for part in parts)


def _cols_view(weight: torch.Tensor, slots: Slots) -> torch.Tensor:
    """The down weight [dim, E·m] as [E, m, dim] (expert e: its column block, transposed; no copy)."""
    return weight.view(weight.shape[0], slots.offsets.numel(), -1).permute(1, 2, 0)


def grouped_cols(h: torch.Tensor, weight: torch.Tensor, slots: Slots) -> torch.Tensor:
    """[N·k, dim]: each expert's activations h [N·k, m] times its column block of `weight` ([dim, E·m])."""
    fits = _fits_grouped_mm(weight.shape[0], h.shape[1], h, weight)
    return _ContiguousGrad.apply(_gmm(h, _cols_view(weight, slots), slots, fits))


def grouped_cols_combine(
    h: torch.Tensor, weight: torch.Tensor, p: torch.Tensor, slots: Slots
) -> torch.Tensor:
    """[N, dim]: `grouped_cols` summed over each token's k slots, straight-through in p [N, k] (SSD's
    weight, exactly 1 in the forward)."""
    return _ColsCombine.apply(h, weight, p, slots)
