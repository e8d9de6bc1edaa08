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


QUERY_CHUNK = 128
"""Queries per step of the torch path: the [B, Hkv, G, chunk, L] logits stay small enough for the cache,
and every step reuses one buffer for logits, probabilities and (optionally) the received mass."""


def stage_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor,
    scale: float,
    *,
    with_mass: bool = False,
) -> tuple[torch.Tensor, ...]:
    """One stage: masked softmax attention -> (out [B, Hq, n, D] fp32, lse [B, Hq, n] fp32), and with
    `with_mass` also the probability each key received, summed over queries and the heads of its KV
    group ([B, Hkv, L] fp32, as `received_mass`), from the same logits."""
    batch, n_q, n, _ = q.shape
    n_kv, length, dim_v = k.shape[1], k.shape[2], v.shape[-1]
    if length == 0:
        out = q.new_zeros(batch, n_q, n, dim_v, dtype=torch.float32)
        lse = torch.full((batch, n_q, n), -math.inf, device=q.device)
        mass = torch.zeros(batch, n_kv, 0, device=q.device)
        return (out, lse, mass) if with_mass else (out, lse)
    if n_q % n_kv:
        raise ValueError(f"query heads ({n_q}) must be a multiple of key heads ({n_kv})")
    group = n_q // n_kv
    qg = q.float().reshape(batch, n_kv, group, n, q.shape[-1])
    k_t, vf = k.float().transpose(-1, -2), v.float()
    out = torch.empty(batch, n_kv, group, n, dim_v, device=q.device)
    lse = torch.empty(batch, n_kv, group, n, device=q.device)
    mass = torch.zeros(batch, n_kv, length, device=q.device) if with_mass else None
    for s in range(0, n, QUERY_CHUNK):
        c = min(QUERY_CHUNK, n - s)
        mask_c = mask[:, None, None, s : s + c]
        # Only the key columns some query of the chunk sees (a window's band, a causal block's prefix):
        # the others would get probability 0 in every row.
        cols = mask[:, s : s + c].any(dim=1).any(dim=0).nonzero()
        if cols.numel() == 0:
            out[:, :, :, s : s + c] = 0.0
            lse[:, :, :, s : s + c] = -math.inf
            continue
        a, b = int(cols[0]), int(cols[-1]) + 1
        q_c = qg[:, :, :, s : s + c].reshape(batch, n_kv, group * c, -1)
        logits = torch.matmul(q_c, k_t[..., a:b]).mul_(scale).view(batch, n_kv, group, c, b - a)
        logits.masked_fill_(~mask_c[..., a:b], -math.inf)
        # Softmax by hand so the exponentials are taken once (logsumexp would take them again).
        top = logits.amax(dim=-1, keepdim=True).nan_to_num_(neginf=0.0)  # empty rows: exp(-inf) = 0
        probs = logits.sub_(top).exp_()
        total = probs.sum(dim=-1, keepdim=True)
        lse[:, :, :, s : s + c] = (top + total.log()).squeeze(-1)
        probs.mul_(1.0 / total.clamp_min(torch.finfo(torch.float32).tiny))
        out[:, :, :, s : s + c] = torch.matmul(probs.view(batch, n_kv, group * c, b - a), vf[:, :, a:b]).view(
            batch, n_kv, group, c, dim_v
        )
        if mass is not None:
            mass[:, :, a:b] += probs.sum(dim=(2, 3))
    out, lse = out.reshape(batch, n_q, n, dim_v), lse.reshape(batch, n_q, n)
    return (out, lse, mass) if with_mass else (out, lse)


def merge_stages(
    out_1: torch.Tensor, lse_1: torch.Tensor, out_2: torch.Tensor, lse_2: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-sum-exp merge of two stages (rows empty in both stay 0 with lse -inf)."""
    return merge_partials([out_1, out_2], [lse_1, lse_2])


def merge_partials(outs: list[torch.Tensor], lses: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-sum-exp merge of N attentions over disjoint key sets (outs [..., T, D], lses [..., T] fp32): the
    softmax over their union, Σ_p exp(lse_p − lse)·out_p with lse = logsumexp_p(lse_p). Rows empty in every
    part stay 0 with lse -inf. Used by the two stages here and by APB/Ring/Star (densa.longctx.apb)."""
    lse = lses[0]
    for part in lses[1:]:
        lse = torch.logaddexp(lse, part)
    safe = lse.nan_to_num(neginf=0.0)
    out = None
    for o, part in zip(outs, lses, strict=True):
        term = o * torch.exp(part - safe).nan_to_num(nan=0.0)[..., None]
        out = term if out is None else out + term
    return out, lse


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


def _resolve(backend: Backend, device: torch.device):  # noqa: ANN202 (the Triton function or None)
    """The Triton two-stage function when `backend` asks for it and it imports, else None (torch)."""
    if backend not in ("auto", "torch", "triton"):
        raise ValueError(f"backend must be auto, torch or triton, got {backend!r}")
    if backend == "torch" or (backend == "auto" and device.type != "cuda"):
        return None
    try:
        from densa.kernels.triton_two_stage import two_stage_attention_triton
    except ImportError:
        if backend == "triton":
            raise
        return None
    return two_stage_attention_triton


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
    triton_fn = _resolve(backend, q_local.device)
    return two_stage_attention_torch(*args) if triton_fn is None else triton_fn(*args)


def two_stage_attention_with_mass(
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
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`two_stage_attention` plus the local stage's `received_mass` [B, Hkv, L_local]. The torch path
    takes the mass from the local stage's own probabilities (one pass over the logits, not two)."""
    args = (q_local, k_local, v_local, mask_local, q_memory, k_memory, v_memory, mask_memory, scale)
    triton_fn = _resolve(backend, q_local.device)
    if triton_fn is not None:
        out, lse_l = triton_fn(*args)
        return out, lse_l, received_mass(q_local, k_local, mask_local, lse_l, scale)
    out_l, lse_l, mass = stage_attention(q_local, k_local, v_local, mask_local, scale, with_mass=True)
    out_m, lse_m = stage_attention(q_memory, k_memory, v_memory, mask_memory, scale)
    out, _ = merge_stages(out_l, lse_l, out_m, lse_m)
    return out.to(q_local.dtype), lse_l, mass
