"""Chunked prefill and decoding under a KV budget (Locret's inference loop, for any policy).

The prompt is fed in chunks of `chunk` tokens. Before a forward would grow the cache past
`budget + chunk` entries, and after every prefill chunk, each layer keeps its top-`budget` entries per KV
head (policy scores, the last stabilizers forced in), in positional order. So a layer never holds more
than budget + chunk entries. An optional question `tail` (≤ chunk tokens) is fed after the last eviction
without evicting, as Locret does with its last 100 tokens; decoding evicts only when it must.

Positions: by default new tokens continue from `cache.seen_tokens` (original positions, gaps where
entries were evicted). `compact_positions=True` is Locret's own handling: after each eviction the kept
keys are re-rotated to positions 0..K-1 and new tokens continue from K, so positions stay < budget + chunk.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from densa.longctx.errors import KVPolicyError
from densa.longctx.policies import build_policy
from densa.longctx.policy import KVPolicy
from densa.models.kv_cache import KVCache
from densa.models.rope import rotate_half
from densa.models.transformer import Transformer


@dataclass
class PolicyStats:
    peak_kv_tokens: int = 0
    """Most entries any layer held at once (after a forward, before eviction)."""
    evictions: int = 0
    forwards: int = 0
    tokens_seen: int = 0
    kept_positions: list[torch.Tensor] = field(default_factory=list)
    """Per layer, the input-stream index [B, Hkv, L] of each entry held at the end (its original position,
    also under `compact_positions`)."""
    memory: dict | None = None
    """Policies that replace attention (InfLLM): their own counters (units, unit loads, cache hits,
    attended tokens per query, ...); peak_kv_tokens is then their peak K/V entries on the device."""


def _check(policy: KVPolicy, budget: int | None, chunk: int) -> None:
    if not isinstance(chunk, int) or chunk <= 0:
        raise KVPolicyError(f"chunk must be a positive number of tokens, got {chunk!r}")
    if not policy.evicts:
        return
    if budget is None or budget <= 0:
        raise KVPolicyError(f"kv policy {policy.name!r} needs a positive budget (tokens), got {budget!r}")
    reserved = policy.reserved(budget)
    if budget < reserved:
        raise KVPolicyError(
            f"budget {budget} is smaller than the {reserved} entries kv policy {policy.name!r} always keeps "
            f"(stabilizers {policy.stabilizers(budget)}"
            + (f" + sinks {policy.n_sink}" if hasattr(policy, "n_sink") else "")
            + "): raise the budget or lower them"
        )


class PolicySession:
    """One sequence (batch of equal-length rows) under a policy. Use as a context manager."""

    def __init__(
        self,
        model: Transformer,
        policy: KVPolicy | str,
        budget: int | None,
        chunk: int,
        *,
        compact_positions: bool = False,
    ) -> None:
        self.policy = build_policy(policy) if isinstance(policy, str) else policy
        _check(self.policy, budget, chunk)
        self.model, self.budget, self.chunk = model, budget, chunk
        self.compact = compact_positions
        n_layers = model.config.n_layers
        capacity = (budget + chunk) if (budget and self.policy.evicts) else 256
        self.cache = KVCache(n_layers, initial_capacity=capacity)
        self.positions: list[torch.Tensor | None] = [None] * n_layers  # RoPE positions of the entries
        self.origins: list[torch.Tensor | None] = [None] * n_layers  # their index in the input stream
        self.stats = PolicyStats()
        self._queries: list[torch.Tensor | None] = [None] * n_layers
        self._handles: list = []
        self.policy.bind(model)
        self.policy.reset(n_layers)
        self._context = self.policy.open(model) if self.policy.replaces_attention else None
        if self.policy.needs_queries:
            for i, block in enumerate(model.layers):
                self._handles.append(block.attn.hook_q.register_forward_hook(self._query_hook(i)))

    def _query_hook(self, layer: int):
        def hook(_m: nn.Module, _inp: tuple, out: torch.Tensor) -> None:
            self._queries[layer] = out.detach()

        return hook

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.policy.unbind()

    def __enter__(self) -> PolicySession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- feeding -----------------------------------------------------------------------------------

    def length(self) -> int:
        return self.cache.length(0)

    @property
    def context(self):  # noqa: ANN201
        """The policy's own context (InfLLMContext) when it replaces attention, else None."""
        return self._context

    @torch.no_grad()
    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Run `input_ids` [B, n] (n ≤ chunk) over the cache, evicting first if the cache would pass
        budget + chunk; returns logits [B, n, V]."""
        n = input_ids.shape[1]
        if n > self.chunk:
            raise KVPolicyError(f"a forward of {n} tokens exceeds the chunk size {self.chunk}")
        if self._context is not None:
            logits = self._context.forward(input_ids)
            peak = self._context.stats.peak_device_tokens
            self.stats.peak_kv_tokens = max(self.stats.peak_kv_tokens, peak)
            self.stats.forwards += 1
            self.stats.tokens_seen += n
            return logits
        if self.policy.evicts and self.length() + n > self.budget + self.chunk:
            self.evict()
        start = self.cache.seen_tokens
        logits = self.model(input_ids, kv_cache=self.cache)
        new_pos = torch.arange(start, start + n, device=input_ids.device)
        seen = self.stats.tokens_seen
        new_origin = torch.arange(seen, seen + n, device=input_ids.device)
        for layer in range(self.model.config.n_layers):
            keys, _ = self.cache.get(layer)
            for store, new in ((self.positions, new_pos), (self.origins, new_origin)):
                grown = new.expand(keys.shape[0], keys.shape[1], n)
                store[layer] = grown if store[layer] is None else torch.cat([store[layer], grown], dim=2)
            self.policy.observe(layer, self._queries[layer], keys)
            self._queries[layer] = None
        self.stats.peak_kv_tokens = max(self.stats.peak_kv_tokens, self.length())
        self.stats.forwards += 1
        self.stats.tokens_seen += n
        return logits

    @torch.no_grad()
    def evict(self) -> None:
        """Keep each layer's top-`budget` entries per KV head (no-op under budget or for `full`)."""
        if not self.policy.evicts or self.length() <= self.budget:
            return
        n_stab = min(self.policy.stabilizers(self.budget), self.budget)
        for layer in range(self.model.config.n_layers):
            keys, _ = self.cache.get(layer)
            scores = self.policy.scores(layer, keys, self.positions[layer]).float().clone()
            if n_stab:
                scores[..., -n_stab:] = torch.inf
            keep = scores.topk(self.budget, dim=-1).indices.sort(dim=-1).values
            self.cache.keep(layer, keep)
            self.positions[layer] = self.positions[layer].gather(2, keep)
            self.origins[layer] = self.origins[layer].gather(2, keep)
            self.policy.keep(layer, keep)
        self.stats.evictions += 1
        if self.compact:
            self._compact()

    def _compact(self) -> None:
        """Re-rotate kept keys to positions 0..K-1 (R(new) k = R(new - old) R(old) k)."""
        for layer in range(self.model.config.n_layers):
            keys, _ = self.cache.get(layer)
            kept = keys.shape[2]
            new = torch.arange(kept, device=keys.device).expand_as(self.positions[layer])
            shift = self.positions[layer] - new  # ≥ 0: sorted, distinct positions
            cos, sin = self.model.rope(shift.reshape(-1), keys.dtype)
            cos, sin = cos.view(*shift.shape, -1), sin.view(*shift.shape, -1)
            keys.copy_(keys * cos - rotate_half(keys) * sin)
            self.positions[layer] = new.clone()
        self.cache.seen_tokens = self.length()

    def prefill(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Feed `input_ids` [B, T] chunk by chunk, evicting after each; returns the last chunk's logits."""
        if input_ids.shape[1] == 0:
            raise KVPolicyError("prefill needs at least one token")
        logits = None
        for start in range(0, input_ids.shape[1], self.chunk):
            logits = self.forward(input_ids[:, start : start + self.chunk])
            self.evict()
        return logits

    def finish(self) -> PolicyStats:
        if self._context is not None:
            self.stats.memory = self._context.finish().summary()
        self.stats.kept_positions = [p.clone() for p in self.origins if p is not None]
        return self.stats


@dataclass
class GenerationResult:
    tokens: torch.Tensor
    """[B, T + n]: the prompt followed by the generated tokens."""
    stats: PolicyStats
    tail_logits: torch.Tensor | None = None
    """Logits of the held-back tail [B, tail, V] (teacher-forced evaluation), when tail > 0."""


@torch.no_grad()
def generate_with_policy(
    model: Transformer,
    input_ids: torch.Tensor,
    policy: KVPolicy | str,
    budget: int | None,
    chunk: int,
    max_new_tokens: int,
    *,
    tail: int = 0,
    compact_positions: bool = False,
    eos_token_id: int | None = None,
) -> GenerationResult:
    """Chunked prefill of input_ids[:, :-tail] under `policy` and `budget`, then the tail, then greedy
    decoding. `stats.peak_kv_tokens` ≤ budget + chunk for every evicting policy."""
    _check(policy if isinstance(policy, KVPolicy) else build_policy(policy), budget, chunk)
    if not 0 <= tail < input_ids.shape[1]:
        raise KVPolicyError(f"tail must be in [0, prompt length {input_ids.shape[1]}), got {tail}")
    if tail > chunk:
        raise KVPolicyError(f"tail ({tail}) must fit in one chunk ({chunk}) to keep the KV bound")
    with PolicySession(model, policy, budget, chunk, compact_positions=compact_positions) as session:
        context = input_ids[:, : input_ids.shape[1] - tail]
        logits = session.prefill(context)
        tail_logits = session.forward(input_ids[:, -tail:]) if tail else None
        if tail_logits is not None:
            logits = tail_logits
        out = input_ids
        finished = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        for step in range(max_new_tokens):
            next_ids = logits[:, -1].argmax(dim=-1)
            if eos_token_id is not None:
                next_ids = next_ids.masked_fill(finished, eos_token_id)
                finished |= next_ids == eos_token_id
            out = torch.cat([out, next_ids[:, None]], dim=1)
            if step == max_new_tokens - 1 or (eos_token_id is not None and bool(finished.all())):
                break
            logits = session.forward(next_ids[:, None])
        return GenerationResult(out, session.finish(), tail_logits)
