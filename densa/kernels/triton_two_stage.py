"""Triton two-stage attention (InfLLM): both stages and their log-sum-exp merge in one kernel.

One program per (batch row, query head, block of BLOCK_M queries). It runs an online softmax over the
local stage's keys, then another over the memory stage's keys (each with its own [B, n, L] mask, so each
stage keeps its own position handling and its own lse), and merges the two in registers:
out = (acc_1 e^{m_1 - m} + acc_2 e^{m_2 - m}) / (l_1 e^{m_1 - m} + l_2 e^{m_2 - m}), m = max(m_1, m_2).
Masked scores use a large negative finite value, so a row with no key in a stage has l = 0 there and the
stage drops out (lse = -inf). GQA: query head h reads KV head h // (Hq / Hkv), never a copied KV tensor.
Accumulation is fp32; fp32 inputs use IEEE dots (no TF32), half inputs feed tensor cores.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl


@triton.jit
def _stage(
    q, k_base, v_base, mask_base, n_keys, n_q, offs_m, row_ok, offs_d, d_ok, scale,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    IEEE: tl.constexpr,
):  # fmt: skip
    m_i = tl.full([BLOCK_M], -1.0e30, tl.float32)  # finite: empty rows stay NaN-free
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start in range(0, n_keys, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        n_ok = offs_n < n_keys
        kv_mask = n_ok[:, None] & d_ok[None, :]
        k = tl.load(k_base + offs_n[:, None] * HEAD_DIM + offs_d[None, :], mask=kv_mask, other=0.0)
        if IEEE:
            s = tl.dot(q, tl.trans(k), input_precision="ieee")
        else:
            s = tl.dot(q, tl.trans(k))
        allowed = tl.load(
            mask_base + offs_m[:, None] * n_keys + offs_n[None, :],
            mask=row_ok[:, None] & n_ok[None, :],
            other=0,
        )
        allowed = allowed != 0
        s = tl.where(allowed, s * scale, -1.0e30)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.where(allowed, tl.exp(s - m_new[:, None]), 0.0)
        alpha = tl.exp(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_base + offs_n[:, None] * HEAD_DIM + offs_d[None, :], mask=kv_mask, other=0.0)
        if IEEE:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
        else:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new
    return m_i, l_i, acc


@triton.jit
def _two_stage_kernel(
    q1_ptr, k1_ptr, v1_ptr, mask1_ptr, q2_ptr, k2_ptr, v2_ptr, mask2_ptr, out_ptr, lse_ptr,
    n_q, n_keys_1, n_keys_2, n_heads, n_kv_heads, scale,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    IEEE: tl.constexpr,
):  # fmt: skip
    pid_bh = tl.program_id(0)
    b = (pid_bh // n_heads).to(tl.int64)
    h = (pid_bh % n_heads).to(tl.int64)
    hk = h // (n_heads // n_kv_heads)
    offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok, d_ok = offs_m < n_q, offs_d < HEAD_DIM
    q_off = ((b * n_heads + h) * n_q + offs_m[:, None]) * HEAD_DIM + offs_d[None, :]
    q_mask = row_ok[:, None] & d_ok[None, :]

    q1 = tl.load(q1_ptr + q_off, mask=q_mask, other=0.0)
    kv1 = (b * n_kv_heads + hk) * n_keys_1 * HEAD_DIM
    m_1, l_1, acc_1 = _stage(
        q1, k1_ptr + kv1, v1_ptr + kv1, mask1_ptr + b * n_q * n_keys_1, n_keys_1, n_q,
        offs_m, row_ok, offs_d, d_ok, scale, HEAD_DIM, BLOCK_M, BLOCK_N, BLOCK_D, IEEE,
    )  # fmt: skip
    q2 = tl.load(q2_ptr + q_off, mask=q_mask, other=0.0)
    kv2 = (b * n_kv_heads + hk) * n_keys_2 * HEAD_DIM
    m_2, l_2, acc_2 = _stage(
        q2, k2_ptr + kv2, v2_ptr + kv2, mask2_ptr + b * n_q * n_keys_2, n_keys_2, n_q,
        offs_m, row_ok, offs_d, d_ok, scale, HEAD_DIM, BLOCK_M, BLOCK_N, BLOCK_D, IEEE,
    )  # fmt: skip

    m = tl.maximum(m_1, m_2)
    w_1, w_2 = tl.exp(m_1 - m), tl.exp(m_2 - m)
    denom = l_1 * w_1 + l_2 * w_2
    out = (acc_1 * w_1[:, None] + acc_2 * w_2[:, None]) / tl.where(denom > 0, denom, 1.0)[:, None]
    tl.store(out_ptr + q_off, out, mask=q_mask)
    lse_1 = tl.where(l_1 > 0, m_1 + tl.log(tl.where(l_1 > 0, l_1, 1.0)), -float("inf"))
    tl.store(lse_ptr + (b * n_heads + h) * n_q + offs_m, lse_1, mask=row_ok)


def _stage_inputs(
    k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, batch: int, n: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Contiguous K, V and an int8 mask; an empty stage becomes one masked zero key."""
    if k.shape[2] == 0:
        k = k.new_zeros(k.shape[0], k.shape[1], 1, k.shape[3])
        v = v.new_zeros(v.shape[0], v.shape[1], 1, v.shape[3])
        mask = torch.zeros(batch, n, 1, dtype=torch.bool, device=k.device)
    return k.contiguous(), v.contiguous(), mask.expand(batch, n, -1).to(torch.int8).contiguous()


def two_stage_attention_triton(
    q_local: torch.Tensor,
    k_local: torch.Tensor,
    v_local: torch.Tensor,
    mask_local: torch.Tensor,
    q_memory: torch.Tensor,
    k_memory: torch.Tensor,
    v_memory: torch.Tensor,
    mask_memory: torch.Tensor,
    scale: float,
    block_m: int = 16,
    block_n: int = 32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as densa.kernels.two_stage_attention.two_stage_attention_torch."""
    batch, n_heads, n, dim = q_local.shape
    n_kv = k_local.shape[1]
    if n_heads % n_kv:
        raise ValueError(f"query heads ({n_heads}) must be a multiple of key heads ({n_kv})")
    dtype = q_local.dtype
    k1, v1, m1 = _stage_inputs(k_local.to(dtype), v_local.to(dtype), mask_local, batch, n)
    k2, v2, m2 = _stage_inputs(k_memory.to(dtype), v_memory.to(dtype), mask_memory, batch, n)
    out = torch.empty(batch, n_heads, n, dim, dtype=torch.float32, device=q_local.device)
    lse = torch.empty(batch, n_heads, n, dtype=torch.float32, device=q_local.device)
    grid = (batch * n_heads, math.ceil(n / block_m))
    _two_stage_kernel[grid](
        q_local.contiguous(), k1, v1, m1, q_memory.to(dtype).contiguous(), k2, v2, m2, out, lse,
        n, k1.shape[2], k2.shape[2], n_heads, n_kv, scale,
        HEAD_DIM=dim, BLOCK_M=block_m, BLOCK_N=block_n,
        BLOCK_D=max(16, triton.next_power_of_2(dim)), IEEE=dtype == torch.float32,
    )  # fmt: skip
    return out.to(dtype), lse
