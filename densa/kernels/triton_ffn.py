"""Triton kernels for sparse-FFN decode (1-4 tokens) and their launchers.

Two kernels, both reading only active rows (row-major gate/up, neuron-major `down_t`, see weights.py):
- `_gate_up_kernel`, output-sparse: one program per block of neurons (all neurons, or the entries of
  `active_idx`). It computes the gate rows, applies the activation and the exact threshold, then reads the
  up rows of a gated FFN only where some token is active (masked loads issue no memory traffic for masked
  lanes; a block with no active neuron skips the up loop). Activation and gate*up are fused in the epilogue.
- `_down_kernel`, input-sparse: split-K over neuron blocks x tiles of dim. Each program loads h for its
  neurons, reads `down_t` rows only where h != 0 for some token, and atomically adds its partial [B, tile]
  sum into an fp32 output (split-K keeps the GPU busy when few rows survive). With one split it is the loop
  variant: one program per dim tile walks all neurons and stores, deterministic and atomic-free.
Accumulation is fp32 throughout; h is kept in fp32 ([B, ffn_dim] is tiny).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from densa.kernels.reference import Thresholds, threshold_vector
from densa.kernels.weights import SparseFFNWeights

ACT_CODES = {"relu": 0, "relu2": 1, "silu": 2, "gelu": 3, "gelu_tanh": 4}
MAX_TOKENS = 16  # union sparsity 1 - s^B vanishes quickly with B: these are decode kernels


@triton.jit
def _activation(v, ACT: tl.constexpr):
    if ACT == 0:
        return tl.maximum(v, 0.0)
    elif ACT == 1:
        r = tl.maximum(v, 0.0)
        return r * r
    elif ACT == 2:
        return v * tl.sigmoid(v)
    elif ACT == 3:
        return 0.5 * v * (1.0 + tl.math.erf(v * 0.7071067811865476))
    else:
        inner = 0.7978845608028654 * (v + 0.044715 * v * v * v)
        return 0.5 * v * (1.0 + (2.0 * tl.sigmoid(2.0 * inner) - 1.0))  # tanh(y) = 2*sigmoid(2y) - 1


@triton.jit
def _gate_up_kernel(
    x_ptr, w_ptr, idx_ptr, thr_ptr, h_ptr,
    n_tok, n_rows, ffn_dim, dim, stride_x, stride_w, stride_thr, stride_h,
    GATED: tl.constexpr, HAS_IDX: tl.constexpr, HAS_THR: tl.constexpr, ACT: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_F: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    offs_k = tl.program_id(0) * BLOCK_F + tl.arange(0, BLOCK_F)
    k_mask = offs_k < n_rows
    if HAS_IDX:
        rows = tl.load(idx_ptr + offs_k, mask=k_mask, other=0).to(tl.int64)
        k_mask = k_mask & (rows >= 0) & (rows < ffn_dim)  # out-of-range indices read nothing
    else:
        rows = offs_k.to(tl.int64)
    offs_b = tl.arange(0, BLOCK_B)
    b_mask = offs_b < n_tok

    gate = tl.zeros([BLOCK_B, BLOCK_F], dtype=tl.float32)
    for d0 in range(0, dim, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        d_mask = offs_d < dim
        xv = tl.load(x_ptr + offs_b[:, None] * stride_x + offs_d[None, :],
                     mask=b_mask[:, None] & d_mask[None, :], other=0.0).to(tl.float32)  # fmt: skip
        wv = tl.load(w_ptr + rows[:, None] * stride_w + offs_d[None, :],
                     mask=k_mask[:, None] & d_mask[None, :], other=0.0).to(tl.float32)  # fmt: skip
        gate += tl.sum(xv[:, None, :] * wv[None, :, :], axis=2)
    a = _activation(gate, ACT)

    active = b_mask[:, None] & k_mask[None, :]
    if HAS_THR:
        t = tl.load(thr_ptr + rows * stride_thr, mask=k_mask, other=0.0)
        active = active & (tl.abs(a) > t[None, :])
    h = a
    if GATED:
        row_active = tl.max(active.to(tl.int32), axis=0) > 0  # union over tokens
        up = tl.zeros([BLOCK_B, BLOCK_F], dtype=tl.float32)
        if tl.max(row_active.to(tl.int32), axis=0) > 0:
            up_rows = rows + ffn_dim  # fused [gate; up] layout
            for d0 in range(0, dim, BLOCK_D):
                offs_d = d0 + tl.arange(0, BLOCK_D)
                d_mask = offs_d < dim
                xv = tl.load(x_ptr + offs_b[:, None] * stride_x + offs_d[None, :],
                             mask=b_mask[:, None] & d_mask[None, :], other=0.0).to(tl.float32)  # fmt: skip
                up_mask = row_active[:, None] & d_mask[None, :]
                wv = tl.load(w_ptr + up_rows[:, None] * stride_w + offs_d[None, :], mask=up_mask, other=0.0)
                wv = wv.to(tl.float32)
                up += tl.sum(xv[:, None, :] * wv[None, :, :], axis=2)
        h = a * up
    h = tl.where(active, h, 0.0)
    tl.store(h_ptr + offs_b[:, None] * stride_h + offs_k[None, :], h,
             mask=b_mask[:, None] & (offs_k < n_rows)[None, :])  # fmt: skip


@triton.jit
def _down_kernel(
    h_ptr, idx_ptr, wt_ptr, out_ptr,
    n_tok, n_rows, ffn_dim, dim, rows_per_split, stride_h, stride_wt, stride_out,
    HAS_IDX: tl.constexpr, USE_ATOMIC: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    d_mask = offs_d < dim
    offs_b = tl.arange(0, BLOCK_B)
    b_mask = offs_b < n_tok
    k_start = tl.program_id(0) * rows_per_split
    acc = tl.zeros([BLOCK_B, BLOCK_D], dtype=tl.float32)
    for k0 in range(0, rows_per_split, BLOCK_K):
        offs_k = k_start + k0 + tl.arange(0, BLOCK_K)
        k_mask = offs_k < n_rows
        if HAS_IDX:
            rows = tl.load(idx_ptr + offs_k, mask=k_mask, other=0).to(tl.int64)
            k_mask = k_mask & (rows >= 0) & (rows < ffn_dim)
        else:
            rows = offs_k.to(tl.int64)
        hv = tl.load(h_ptr + offs_b[:, None] * stride_h + offs_k[None, :],
                     mask=b_mask[:, None] & k_mask[None, :], other=0.0)  # fmt: skip
        row_active = k_mask & (tl.max((hv != 0.0).to(tl.int32), axis=0) > 0)
        wv = tl.load(wt_ptr + rows[:, None] * stride_wt + offs_d[None, :],
                     mask=row_active[:, None] & d_mask[None, :], other=0.0).to(tl.float32)  # fmt: skip
        acc += tl.sum(hv[:, :, None] * wv[None, :, :], axis=1)
    out_ptrs = out_ptr + offs_b[:, None] * stride_out + offs_d[None, :]
    out_mask = b_mask[:, None] & d_mask[None, :]
    if USE_ATOMIC:
        tl.atomic_add(out_ptrs, acc, mask=out_mask)
    else:
        tl.store(out_ptrs, acc, mask=out_mask)


@dataclass(frozen=True)
class KernelConfig:
    """Tile sizes; None picks a default from the shape. `split_k=1` is the atomic-free loop variant."""

    block_f: int = 16  # neurons per gate/up program
    block_d: int | None = None  # dim tile of the gate/up reduction
    block_k: int = 16  # neurons per step of the down reduction
    block_d_down: int = 128  # output columns per down program
    split_k: int | None = None  # neuron splits of the down projection


def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4  # interpreter on CPU: a few splits still exercise the atomic path


def sparse_ffn_triton(
    x: torch.Tensor,
    weights: SparseFFNWeights,
    thresholds: Thresholds = None,
    active_idx: torch.Tensor | None = None,
    activation: str = "relu",
    config: KernelConfig | None = None,
) -> torch.Tensor:
    """Run both kernels; inputs are assumed checked (see `densa.kernels.sparse_ffn`)."""
    cfg = config or KernelConfig()
    x2 = x.reshape(-1, weights.dim)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    n_tok, dim, ffn_dim = x2.shape[0], weights.dim, weights.ffn_dim
    if n_tok > MAX_TOKENS:
        raise ValueError(f"the Triton decode kernels take at most {MAX_TOKENS} tokens, got {n_tok}")
    block_b = max(1, triton.next_power_of_2(n_tok))
    idx = None if active_idx is None else active_idx.to(x.device).contiguous()
    n_rows = ffn_dim if idx is None else idx.numel()
    if n_rows == 0:  # an empty predicted set: nothing to read
        return x.new_zeros(*x.shape[:-1], dim)
    thr = threshold_vector(thresholds, ffn_dim, x.device)
    h = torch.empty(n_tok, n_rows, dtype=torch.float32, device=x.device)
    block_d = cfg.block_d or max(32, min(triton.next_power_of_2(dim), 512 // block_b))
    _gate_up_kernel[(triton.cdiv(n_rows, cfg.block_f),)](
            x2, weights.first, h if idx is None else idx, h if thr is None else thr, h,
            n_tok, n_rows, ffn_dim, dim, x2.stride(0), weights.first.stride(0),
            0 if thr is None else thr.stride(0), h.stride(0),
            GATED=weights.gated, HAS_IDX=idx is not None, HAS_THR=thr is not None, ACT=ACT_CODES[activation],
            BLOCK_B=block_b, BLOCK_F=cfg.block_f, BLOCK_D=block_d,
        )  # fmt: skip

    d_tiles = triton.cdiv(dim, cfg.block_d_down)
    k_blocks = triton.cdiv(n_rows, cfg.block_k)
    # Enough programs to fill the device (~4 per SM), never more splits than neuron blocks.
    splits = cfg.split_k or max(1, min(k_blocks, 4 * _num_sms(x.device) // d_tiles))
    rows_per_split = triton.cdiv(k_blocks, splits) * cfg.block_k
    splits = triton.cdiv(n_rows, rows_per_split)
    out = (torch.zeros if splits > 1 else torch.empty)(n_tok, dim, dtype=torch.float32, device=x.device)
    _down_kernel[(splits, d_tiles)](
        h, h if idx is None else idx, weights.down_t, out,
        n_tok, n_rows, ffn_dim, dim, rows_per_split, h.stride(0), weights.down_t.stride(0), out.stride(0),
        HAS_IDX=idx is not None, USE_ATOMIC=splits > 1,
        BLOCK_B=block_b, BLOCK_K=cfg.block_k, BLOCK_D=cfg.block_d_down,
    )  # fmt: skip
    return out.reshape(*x.shape[:-1], dim).to(x.dtype)
