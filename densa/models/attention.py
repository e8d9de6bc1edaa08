"""Grouped-query self-attention on torch SDPA, with RoPE, optional QKV bias and a KV cache."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from densa.models.config import ModelConfig
from densa.models.hooks import HookPoint
from densa.models.kv_cache import KVCache
from densa.models.linear import column_linear, row_linear
from densa.models.rope import apply_rotary


class Attention(nn.Module):
    """Q, K and V come from one fused projection laid out [q; k; v] (per tensor-parallel rank)."""

    def __init__(self, config: ModelConfig, layer_idx: int, tp_size: int = 1) -> None:
        super().__init__()
        if config.n_heads % tp_size or config.n_kv_heads % tp_size:
            raise ValueError(
                f"n_heads ({config.n_heads}) and n_kv_heads ({config.n_kv_heads}) "
                f"must be divisible by tp ({tp_size})"
            )
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        self.n_local_heads = config.n_heads // tp_size
        self.n_local_kv_heads = config.n_kv_heads // tp_size
        q_out, kv_out = config.n_heads * config.head_dim, config.n_kv_heads * config.head_dim
        self.qkv_proj = column_linear(config.dim, q_out + 2 * kv_out, bias=config.qkv_bias, tp_size=tp_size)
        self.o_proj = row_linear(q_out, config.dim, bias=False, tp_size=tp_size)
        # Hook points see [B, H, T, head_dim]; q and k after RoPE.
        self.hook_q = HookPoint()
        self.hook_k = HookPoint()
        self.hook_v = HookPoint()
        self.hook_out = HookPoint()  # [B, T, H * head_dim], before o_proj

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        kv_cache: KVCache | None = None,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`attn_mask` (bool [B, 1, T, T], True = may attend) replaces the causal mask, e.g. the
        block-diagonal causal mask of packed SFT rows (`document_mask`); not with a KV cache."""
        batch, seq, _ = x.shape
        n_q, n_kv = self.n_local_heads, self.n_local_kv_heads
        qkv = self.qkv_proj(x).view(batch, seq, n_q + 2 * n_kv, self.head_dim)
        # Rotate q and k heads in one pass, in the projection's own [B, T, H, D] layout (contiguous rows,
        # half the elementwise launches), and only then move heads forward for SDPA.
        cos, sin = (
            (cos.unsqueeze(-2), sin.unsqueeze(-2))
            if cos.dim() == 2
            else (cos.transpose(1, 2), sin.transpose(1, 2))
        )
        qk = apply_rotary(qkv[:, :, : n_q + n_kv], cos, sin).transpose(1, 2)
        q, k = qk.split([n_q, n_kv], dim=1)
        v = qkv[:, :, n_q + n_kv :].transpose(1, 2)
        q, k, v = self.hook_q(q), self.hook_k(k), self.hook_v(v)

        past = kv_cache.length(self.layer_idx) if kv_cache is not None else 0
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer_idx, k, v)
        gqa = n_kv != n_q  # SDPA shares each KV head without copying it
        if attn_mask is not None:
            if kv_cache is not None:
                raise ValueError("attn_mask (packed documents) cannot be combined with a KV cache")
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, enable_gqa=gqa)
        elif past == 0:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=seq > 1, enable_gqa=gqa)
        elif seq == 1:
            out = F.scaled_dot_product_attention(q, k, v, enable_gqa=gqa)
        else:
            # Chunked prefill after cached tokens: query i sees every cached key and new keys up to i.
            total = k.shape[2]
            mask = torch.ones(seq, total, dtype=torch.bool, device=x.device).tril(diagonal=total - seq)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
        out = self.hook_out(out.transpose(1, 2).reshape(batch, seq, n_q * self.head_dim))
        return self.o_proj(out)


def document_mask(doc_ids: torch.Tensor) -> torch.Tensor:
    """doc_ids [B, T] -> bool [B, 1, T, T]: token i sees token j iff j <= i and both are in one document.

    The diagonal is always allowed, so no row is fully masked (padding gets its own document id)."""
    seq = doc_ids.shape[1]
    causal = torch.ones(seq, seq, dtype=torch.bool, device=doc_ids.device).tril()
    same = doc_ids.unsqueeze(2) == doc_ids.unsqueeze(1)
    return (same & causal).unsqueeze(1)
