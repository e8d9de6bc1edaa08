"""Two-stage attention (InfLLM): a local stage and a memory stage over different keys, merged by log-sum-exp.

The stages see different keys with different position handling (the local window at exact relative
positions, memory at a constant distance), so each is a softmax attention of its own; the merge

    lse = logaddexp(lse_1, lse_2),   out = out_1 · exp(lse_1 - lse) + out_2 · exp(lse_2 - lse)

equals one softmax over the union of both stages' keys. Shapes: q [B, Hq, n, D], k/v [B, Hkv, L, D] (GQA:
query head h reads KV head h // (Hq / Hkv)), masks [B, n, L] bool (True = attend, shared by the heads). A
query row with no key in a stage gets out 0 and lse -inf there, so an empty stage drops out of the merge.

`two_stage_attention` dispatches: Triton (densa.kernels.triton_two_stage, imported lazily) on CUDA, the
torch path here otherwise. Accumulation is fp32; out comes back in q's dtype, lse in fp32.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

Backend = Literal["auto", "torch", "triton"]


def stage_logits(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """q [B, Hq, n, D] · k [B, Hkv, L, D] -> fp32 logits [B, Hkv, G, n, L] (G = Hq / Hkv)."""
    batch, n_q, n, dim = q.shape
    n_kv = k.shape[1]
    if n_q % n_kv:
        raise ValueError(f"query heads ({n_q}) must be a multiple of key heads ({n_kv})")
    qg = q.float().view(batch, n_kv, n_q // n_kv, n, dim)
    return torch.einsum("bhgnd,bhld->bhgnl", qg, k.float()) * scale


def stage_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """One stage: masked softmax attention -> (out [B, Hq, n, D] fp32, lse [B, Hq, n] fp32)."""
    batch, n_q, n, dim = q.shape
    if k.shape[2] == 0:
        return q.new_zeros(batch, n_q, n, v.shape[-1], dtype=torch.float32), torch.full(
            (batch, n_q, n), -math.inf, device=q.device
        )
    logits = stage_logits(q, k, scale).masked_fill(~mask[:, None, None], -math.inf)
    lse = torch.logsumexp(logits, dim=-1)  # [B, Hkv, G, n]
    probs = torch.exp(logits - lse.nan_to_num(neginf=0.0)[..., None])  # exp(-inf) = 0 in empty rows
    out = torch.einsum("bhgnl,bhld->bhgnd", probs, v.float())
    return out.reshape(batch, n_q, n, -1), lse.reshape(batch, n_q, n)


def merge_stages(
    out_1: torch.Tensor, lse_1: torch.Tensor, out_2: torch.Tensor, lse_2: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-sum-exp merge of two stages (rows empty in both stay 0 with lse -inf)."""
    lse = torch.logaddexp(lse_1, lse_2)
    safe = lse.nan_to_num(neginf=0.0)
    w_1 = torch.exp(lse_1 - safe).nan_to_num(nan=0.0)[..., None]
    w_2 = torch.exp(lse_2 - safe).nan_to_num(nan=0.0)[..., None]
    return out_1 * w_1 + out_2 * w_2, lse


def two_stage_attention_torch(
    q_local: torch.Tensor,
    k_local: torch.Tensor,
    v_local: torch.Tensor,
    mask_local: torch.Tensor,
    q_memory: torch.Tensor,
    k_memory: torch.Tensor,
    v_memory: torch.Tensor,
    mask_memory: torch.Tensor,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(out [B, Hq, n, D] in q's dtype, local-stage lse [B, Hq, n] fp32)."""
    out_l, lse_l = stage_attention(q_local, k_local, v_local, mask_local, scale)
    out_m, lse_m = stage_attention(q_memory, k_memory, v_memory, mask_memory, scale)
    out, _ = merge_stages(out_l, lse_l, out_m, lse_m)
    return out.to(q_local.dtype), lse_l


def received_mass(
    q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor, lse: torch.Tensor, scale: float
) -> torch.Tensor:
    """Attention probability each key received in a stage, summed over queries and the heads of its
    KV group: [B, Hkv, L] (InfLLM's local score, from the stage's lse as the kernels return it)."""
    batch, n_q, n, _ = q.shape
    n_kv = k.shape[1]
    logits = stage_logits(q, k, scale).masked_fill(~mask[:, None, None], -math.inf)
    lse = lse.view(batch, n_kv, n_q // n_kv, n, 1).nan_to_num(neginf=0.0)
    return torch.exp(logits - lse).sum(dim=(2, 3))


def two_stage_attention(
    q_local: torch.Tensor,
    k_local: torch.Tensor,
    v_local: torch.Tensor,
    mask_local: torch.Tensor,
    q_memory: torch.Tensor,
    k_memory: torch.Tensor,
    v_memory: torch.Tensor,
    mask_memory: torch.Tensor,
    scale: float,
    backend: Backend = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two-stage attention on the fastest path for the inputs' device (see the module doc)."""
    args = (q_local, k_local, v_local, mask_local, q_memory, k_memory, v_memory, mask_memory, scale)
    if backend not in ("auto", "torch", "triton"):
        raise ValueError(f"backend must be auto, torch or triton, got {backend!r}")
    if backend == "torch" or (backend == "auto" and q_local.device.type != "cuda"):
        return two_stage_attention_torch(*args)
    try:
        from densa.kernels.triton_two_stage import two_stage_attention_triton
    except ImportError:
        if backend == "triton":
            raise
        return two_stage_attention_torch(*args)
    return two_stage_attention_triton(*args)
