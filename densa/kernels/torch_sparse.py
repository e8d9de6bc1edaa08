"""Pure-torch sparse FFN: gather the active rows, then small matmuls. The path that runs on CPU.

Row gathers only (see weights.py): gate/up rows of the row-major [ffn_dim, dim] weights and rows of the
neuron-major `down_t`, so every skipped neuron is a contiguous block of memory that is never read.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from densa.kernels.reference import Thresholds, check_inputs, get_activation, threshold_vector
from densa.kernels.weights import SparseFFNWeights


def gather_down(h: torch.Tensor, idx: torch.Tensor, down_t: torch.Tensor) -> torch.Tensor:
    """out[b] = sum_k h[b, k] * down_t[idx[k]]: h [N, K] over the rows idx [K] of down_t [ffn_dim, dim].

    One token: embedding_bag(sum, per-sample weights) streams each row once straight into the accumulator,
    with no gathered copy. Several tokens: one gathered copy then a matmul, so each row is read once for all.
    """
    if idx.numel() == 0:
        return h.new_zeros(h.shape[0], down_t.shape[1])
    if h.shape[0] == 1:
        return F.embedding_bag(idx.view(1, -1), down_t, per_sample_weights=h.view(1, -1), mode="sum")
    return h @ down_t.index_select(0, idx)


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
    """
    check_inputs(x, weights, thresholds, active_idx, activation)
    act = get_activation(activation)
    x2 = x.reshape(-1, weights.dim).to(weights.dtype)
    t = threshold_vector(thresholds, weights.ffn_dim, x.device)
    if active_idx is None:
        act_gate = act(x2 @ weights.gate.T)  # [N, ffn_dim]
        mask = act_gate.abs() > t.to(act_gate.dtype)
        idx = mask.any(dim=0).nonzero().squeeze(1)  # sorted: rows are visited in memory order
        act_gate, mask = act_gate[:, idx], mask[:, idx]
    else:
        idx = active_idx.long()
        act_gate = act(x2 @ weights.gate.index_select(0, idx).T)  # [N, K]
        mask = None if t is None else act_gate.abs() > t[idx].to(act_gate.dtype)
    h = act_gate * (x2 @ weights.up.index_select(0, idx).T) if weights.gated else act_gate
    if mask is not None:  # zero the union rows a token itself does not keep
        h = h.masked_fill(~mask, 0)
    out = gather_down(h.contiguous(), idx, weights.down_t)
    return out.reshape(*x.shape[:-1], weights.dim).to(x.dtype)
