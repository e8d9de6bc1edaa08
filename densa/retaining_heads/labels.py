"""CIS labels (Locret): how much the answer will attend to each context token.

For context token j, layer l and KV head g:  S[j] = max over answer positions p ≥ j and over the query
heads h of group g of  q_p^h · k_j^g / sqrt(head_dim)  — the pre-softmax logit, not a probability.
Q and K are read after RoPE (hook_q / hook_k), exactly what attention multiplies. One full causal
forward gives them: the answer rows of a full forward equal running the answer against a full cache.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import nn

from densa.models.transformer import Transformer


@contextlib.contextmanager
def capture_qk(model: Transformer) -> Iterator[list[dict[str, torch.Tensor]]]:
    """Per layer {"q": [B, Hq, T, D], "k": [B, Hkv, T, D]} of the last forward (detached)."""
    records: list[dict[str, torch.Tensor]] = [{} for _ in model.layers]
    handles = []
    for i, block in enumerate(model.layers):
        for key in ("q", "k"):

            def hook(_m: nn.Module, _inp: tuple, out: torch.Tensor, i: int = i, key: str = key) -> None:
                records[i][key] = out.detach()

            handles.append(getattr(block.attn, f"hook_{key}").register_forward_hook(hook))
    try:
        yield records
    finally:
        for handle in handles:
            handle.remove()


def default_context_mask(answer_mask: torch.Tensor) -> torch.Tensor:
    """Tokens strictly before each row's first answer token."""
    seq = answer_mask.shape[1]
    first = torch.where(
        answer_mask.any(1),
        answer_mask.float().argmax(1),
        torch.full_like(answer_mask[:, 0], seq, dtype=torch.long),
    )
    return torch.arange(seq, device=answer_mask.device)[None, :] < first[:, None]


@torch.no_grad()
def cis_labels(q: torch.Tensor, k: torch.Tensor, answer_mask: torch.Tensor) -> torch.Tensor:
    """q [B, Hq, T, D], k [B, Hkv, T, D], answer_mask [B, T] -> labels [B, Hkv, T].

    Tokens no answer position can see (after the last answer, or rows without answers) get -inf.
    """
    batch, n_q, seq, dim = q.shape
    n_kv = k.shape[1]
    group = n_q // n_kv
    labels = torch.full((batch, n_kv, seq), -math.inf, dtype=torch.float32, device=q.device)
    key_pos = torch.arange(seq, device=q.device)
    for b in range(batch):
        rows = answer_mask[b].nonzero().squeeze(-1)
        if rows.numel() == 0:
            continue
        q_ans = q[b, :, rows].float().view(n_kv, group, rows.numel(), dim)
        logits = torch.einsum("gham,gtm->ghat", q_ans, k[b].float()) / math.sqrt(dim)
        logits = logits.masked_fill(key_pos[None, :] > rows[:, None], -math.inf)  # causal
        labels[b] = logits.amax(dim=(1, 2))
    return labels


def label_mask(labels: torch.Tensor, context_mask: torch.Tensor) -> torch.Tensor:
    """[B, T]: context tokens whose label is defined (some answer position sees them)."""
    return context_mask & torch.isfinite(labels[:, 0])
