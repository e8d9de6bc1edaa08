"""Attention that also returns the log-sum-exp of each query's scores, and the exact merge of partial
outputs by their LSEs: softmax over keys split into parts = Σ_p exp(lse_p - lse) · out_p with
lse = logsumexp_p(lse_p). Ring merges the KV blocks it receives this way; Star and APB merge the
per-host outputs of distributed decode."""

from __future__ import annotations

import math

import torch

from densa.kernels.two_stage_attention import merge_partials, stage_attention

# Scores are materialised in fp32: queries go in slices so one slice's scores stay under this many elements.
MAX_SCORES = 1 << 28


def attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """q [B, Hq, Tq, D], k/v [B, Hkv, Tk, D] (GQA: query head h uses KV head h // (Hq / Hkv)),
    allowed bool [Tq, Tk] (None: all) -> out [B, Hq, Tq, D], lse [B, Hq, Tq] in fp32.

    A query with no allowed key gets out 0 and lse -inf, which the merge weighs 0."""
    batch, heads, seq = q.shape[:3]
    step = max(1, MAX_SCORES // max(1, batch * heads * k.shape[2]))
    if seq > step:
        parts = [
            attend(q[:, :, s : s + step], k, v, None if allowed is None else allowed[s : s + step])
            for s in range(0, seq, step)
        ]
        return torch.cat([p[0] for p in parts], dim=2), torch.cat([p[1] for p in parts], dim=2)
    mask = allowed if allowed is not None else q.new_ones(seq, k.shape[2], dtype=torch.bool)
    out, lse = stage_attention(q, k, v, mask.expand(batch, -1, -1), 1.0 / math.sqrt(q.shape[-1]))
    return out.to(q.dtype), lse


def merge(outs: list[torch.Tensor], lses: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Combine partial attentions over disjoint key sets: outs [B, H, T, D], lses [B, H, T] each
    (densa.kernels' merge_partials, in fp32; the output in the parts' dtype)."""
    out, lse = merge_partials(outs, lses)
    return out.to(outs[0].dtype), lse
