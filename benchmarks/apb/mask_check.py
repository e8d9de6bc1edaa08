"""§7.4's check that a cross-host dependency is real: the single-process model with cross-block attention
masked during encoding. Context tokens of block j see their own block causally (`anchor=True`: block 0 too,
Star's view); the tail sees everything, as in Star-style decode. If accuracy barely drops, the task does not
need a later host to see an earlier one, and no passing method can show an advantage on it."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from densa.models import Transformer


def encoding_mask(seq_len: int, context_len: int, hosts: int, anchor: bool) -> torch.Tensor:
    """[T, T] bool, True = may attend: causal, and within the context only same-block pairs (plus block 0
    with `anchor`); rows after the context (the tail) see all earlier tokens."""
    if context_len % hosts:
        raise ValueError(f"context of {context_len} tokens does not split into {hosts} equal blocks")
    pos = torch.arange(seq_len)
    block = torch.where(pos < context_len, pos // (context_len // hosts), -1)  # -1: the tail
    same = block[:, None] == block[None, :]
    seen = same | (block[:, None] == -1)
    if anchor:
        seen |= block[None, :] == 0
    return seen & (pos[:, None] >= pos[None, :])


@torch.no_grad()
def masked_logits(
    model: Transformer, ids: torch.Tensor, context_len: int, hosts: int, *, anchor: bool = False
) -> torch.Tensor:
    """Logits [B, T, V] of `model` on `ids` [B, T] under `encoding_mask` (the model's own layers)."""
    mask = encoding_mask(ids.shape[1], context_len, hosts, anchor).to(ids.device)[None, None]
    x = model.embed_tokens(ids)
    cos, sin = model.rope(torch.arange(ids.shape[1], device=ids.device), x.dtype)
    for layer in model.layers:
        x = layer(x, cos, sin, attn_mask=mask.expand(ids.shape[0], 1, -1, -1))
    return F.linear(model.norm(x), model.output_weight)
