"""CPU sparse FFN: read only the active rows, then small products. The path that runs on CPU.

Row gathers only (see weights.py): gate/up rows of the row-major [ffn_dim, dim] weights and rows of the
neuron-major `down_t`, so every skipped neuron is a contiguous block of memory that is never read.
fp32 rows go through the native kernels (native_cpu.py: no gathered copy, 8 rows in flight) when they
could be built; otherwise, and for fp16/bf16, through torch's index_select/embedding_bag.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from densa.kernels import native_cpu
from densa.kernels.reference import Thresholds, check_inputs, get_activation, neuron_mask, threshold_vector
from densa.kernels.weights import SparseFFNWeights

# Rows are gathered in chunks into one reused buffer of about this size: it stays in L2, and a large fresh
# gathered copy would cost a write plus page faults on top of the reads the gather is meant to save.
GATHER_CHUNK_BYTES = 1 << 20
# Above this active fraction a gather costs more than it saves (measured on CPU, see
# benchmarks/results/sparse_ffn_kernels.md): all rows are read densely and the mask applied, still exact.
DENSE_ABOVE = 0.5


def _chunk_rows(weight: torch.Tensor) -> int:
    return max(16, GATHER_CHUNK_BYTES // (weight.shape[1] * weight.element_size()))


def gather_matmul(x: torch.Tensor, weight: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x [N, dim] @ weight[idx].T -> [N, K]: an output-sparse projection reading only rows idx."""
    if native_cpu.supports(x, weight) and native_cpu.available():
        return native_cpu.gather_dot(x, weight, idx)
    rows = _chunk_rows(weight)
    if idx.numel() <= rows:
        return x @ weight.index_select(0, idx).T
    out = x.new_empty(x.shape[0], idx.numel())
    buf = weight.new_empty(rows, weight.shape[1])
    for start in range(0, idx.numel(), rows):
        part = idx[start : start + rows]
        sel = torch.index_select(weight, 0, part, out=buf[: part.numel()])
        out[:, start : start + part.numel()] = x @ sel.T
    return out


def gather_down(h: torch.Tensor, idx: torch.Tensor, down_t: torch.Tensor) -> torch.Tensor:
    """out[b] = sum_k h[b, k] * down_t[idx[k]]: h [N, K] over the rows idx [K] of down_t [ffn_dim, dim].

    fp32 with the native kernels: one pass, 8 rows at a time. Otherwise, one token: embedding_bag (sum,
    per-sample weights) streams each row into the accumulator without a gathered copy; several tokens:
    chunked gather + addmm, so each row is read once for all tokens.
    """
    if idx.numel() == 0:
        return h.new_zeros(h.shape[0], down_t.shape[1])
    if native_cpu.supports(h, down_t) and native_cpu.available():
        return native_cpu.gather_axpy(h, idx, down_t)
    if h.shape[0] == 1:
        return F.embedding_bag(idx.view(1, -1), down_t, per_sample_weights=h.view(1, -1), mode="sum")
    rows = _chunk_rows(down_t)
    out = h.new_zeros(h.shape[0], down_t.shape[1])
    buf = down_t.new_empty(rows, down_t.shape[1])
    for start in range(0, idx.numel(), rows):
        part = idx[start : start + rows]
        sel = torch.index_select(down_t, 0, part, out=buf[: part.numel()])
        out.addmm_(h[:, start : start + part.numel()], sel)
    return out


def sparse_ffn_torch(
    x: torch.Tensor,
    weights: SparseFFNWeights,
    thresholds: Thresholds = None,
    active_idx: torch.Tensor | None = None,
    activation: str = "relu",
) -> torch.Tensor:
    """Sparse FFN by index_select/embedding_bag; same semantics as `sparse_ffn_reference`.

    With thresholds only, the gate (plain: up) projection runs densely and its active set (union over
    tokens) decides which up/down rows are read; with `active_idx`, only those rows of every weight are read.
    When more than DENSE_ABOVE of the neurons are needed, all rows are read and masked instead.
    """
    check_inputs(x, weights, thresholds, active_idx, activation)
    act = get_activation(activation)
    x2 = x.reshape(-1, weights.dim).to(weights.dtype)
    t = threshold_vector(thresholds, weights.ffn_dim, x.device)
    dense_limit = DENSE_ABOVE * weights.ffn_dim
    if x2.shape[0] == 1 and active_idx is None and t is not None:
        # One token, exact threshold (the decode case): its active set is the whole set, so no per-token
        # mask, union or masked_fill is needed. Natively the whole FFN is one call (small models decode
        # faster than dense only without a dozen small ops); otherwise half the ops of the general path.
        if (
            activation in native_cpu.FUSED_ACTIVATIONS
            and native_cpu.supports(x2, weights.first, weights.down_t)
            and native_cpu.available()
        ):
            fused = native_cpu.ThresholdFFN(weights.gate, weights.up, weights.down_t, t, activation)
            return fused(x2[0]).reshape(*x.shape[:-1], weights.dim).to(x.dtype)
        act_gate = act(x2 @ weights.gate.T)[0]  # [ffn_dim]
        keep = act_gate.abs() > t.to(act_gate.dtype)
        idx = keep.nonzero().squeeze(1)
        if idx.numel() > dense_limit:  # read every row and mask, as below
            h = act_gate.masked_fill(~keep, 0)
            if weights.gated:
                h = h * (x2 @ weights.up.T)[0]  # type: ignore[union-attr]
            out = h[None] @ weights.down_t
        else:
            h = act_gate[idx]
            if weights.gated:
                h = h * gather_matmul(x2, weights.up, idx)[0]  # type: ignore[arg-type]
            out = gather_down(h[None], idx, weights.down_t)
        return out.reshape(*x.shape[:-1], weights.dim).to(x.dtype)
    if active_idx is None or active_idx.numel() > dense_limit:
        act_gate = act(x2 @ weights.gate.T)  # [N, ffn_dim]
        mask = neuron_mask(act_gate, thresholds, active_idx)
        idx = mask.any(dim=0).nonzero().squeeze(1)  # union over tokens, sorted: rows in memory order
        if idx.numel() > dense_limit:
            h = act_gate * (x2 @ weights.up.T) if weights.gated else act_gate
            out = h.masked_fill_(~mask, 0) @ weights.down_t
            return out.reshape(*x.shape[:-1], weights.dim).to(x.dtype)
        act_gate, mask = act_gate[:, idx], mask[:, idx]
    else:
        idx = active_idx.long()
        act_gate = act(gather_matmul(x2, weights.gate, idx))  # [N, K]
        mask = None if t is None else act_gate.abs() > t[idx].to(act_gate.dtype)
    h = act_gate * gather_matmul(x2, weights.up, idx) if weights.gated else act_gate
    if mask is not None:  # zero the union rows a token itself does not keep
        h = h.masked_fill(~mask, 0)
    out = gather_down(h.contiguous(), idx, weights.down_t)
    return out.reshape(*x.shape[:-1], weights.dim).to(x.dtype)
