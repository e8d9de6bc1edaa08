"""Minimal sampling over a densa decoder with its KV cache: greedy, temperature and top-p.

The full generation engine (batching, sparse paths, KV policies) lives in `densa.inference`;
this is what tests and `densa generate` need to compare against transformers.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from densa.models.transformer import Transformer


def sample_next(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None):
    """logits [B, V] -> next token ids [B]; temperature 0 is greedy."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, sorted_idx = probs.sort(dim=-1, descending=True)
        outside = sorted_probs.cumsum(dim=-1) - sorted_probs > top_p  # keep the smallest set reaching top_p
        sorted_probs = sorted_probs.masked_fill(outside, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, sorted_idx, sorted_probs)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(
    model: Transformer,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 0.0,
    top_p: float = 1.0,
    eos_token_id: int | Sequence[int] | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """input_ids [B, T] (no padding) -> [B, T + n] with n ≤ max_new_tokens; stops when every row hit EOS.

    `eos_token_id` may list several end tokens (an HF generation_config's, e.g. EOS and a chat turn's end);
    a finished row is filled with the first."""
    ends = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id or [])
    end_ids = torch.tensor(ends, dtype=torch.long, device=input_ids.device)
    cache = model.new_kv_cache(initial_capacity=input_ids.shape[1] + max_new_tokens)
    logits = model(input_ids, kv_cache=cache)[:, -1]
    out = input_ids
    finished = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
    for _ in range(max_new_tokens):
        next_ids = sample_next(logits, temperature, top_p, generator)
        if ends:
            next_ids = next_ids.masked_fill(finished, ends[0])
            finished |= torch.isin(next_ids, end_ids)
        out = torch.cat([out, next_ids[:, None]], dim=1)
        if ends and bool(finished.all()):
            break
        logits = model(next_ids[:, None], kv_cache=cache)[:, -1]
    return out
