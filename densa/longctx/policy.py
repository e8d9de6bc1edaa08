"""The KV-policy interface (kvpress-like): a policy scores cached entries, the driver keeps the top ones.

A policy sees, after every forward of the chunked-prefill driver and for each layer, the chunk's queries
(post-RoPE, [B, Hq, n, D]) and the layer's whole cache of keys ([B, Hkv, L, D], the chunk's n new keys
last). It keeps per-entry state as [B, Hkv, L] tensors in `self.state[layer]`, which the driver gathers
with the same indices it passes to `KVCache.keep`, so state and cache stay aligned.

Scores are either static (fixed when the entry arrives: Locret, random, StreamingLLM) or recomputed at
eviction time (H2O's accumulated attention, SnapKV's observation window). The last `stabilizers(budget)`
entries are always kept (Locret's stabilizers, H2O's / SnapKV's recent window).
"""

from __future__ import annotations

from typing import ClassVar

import torch

from densa.models.transformer import Transformer


class KVPolicy:
    """Base class. Subclasses set `name` and override `observe` and `scores` (and `reserved` when some
    entries besides the stabilizers are always kept, like StreamingLLM's sinks)."""

    name: ClassVar[str] = ""
    evicts: ClassVar[bool] = True
    needs_queries: ClassVar[bool] = False
    replaces_attention: ClassVar[bool] = False
    """True for policies that run the model themselves (InfLLM): `open(model)` returns an object whose
    `forward(input_ids)` gives logits and whose `finish()` gives stats with `summary()` and
    `peak_device_tokens`; the session then neither fills nor evicts a KVCache."""

    def __init__(self, n_stabilizers: int = 0) -> None:
        if n_stabilizers < 0:
            raise ValueError(f"{self.name}: n_stabilizers must be ≥ 0, got {n_stabilizers}")
        self.n_stabilizers = n_stabilizers
        self.state: list[dict[str, torch.Tensor]] = []

    def __repr__(self) -> str:
        fields = ", ".join(
            f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_") and k != "state"
        )
        return f"{type(self).__name__}({fields})"

    # -- lifecycle ---------------------------------------------------------------------------------

    def bind(self, model: Transformer) -> None:
        """Check the model can run this policy (raise a DensaError naming the problem otherwise)."""

    def unbind(self) -> None: ...

    def open(self, model: Transformer):  # noqa: ANN201 (the context type is the policy's own)
        """A per-sequence context that replaces attention (only when `replaces_attention`)."""
        raise NotImplementedError(f"kv policy {self.name!r} does not replace attention")

    def reset(self, n_layers: int) -> None:
        """Forget everything about the previous sequence."""
        self.state = [{} for _ in range(n_layers)]

    # -- budget ------------------------------------------------------------------------------------

    def stabilizers(self, budget: int) -> int:
        """How many of the most recent entries are always kept."""
        return self.n_stabilizers

    def reserved(self, budget: int) -> int:
        """Entries that are kept whatever their score; the budget must hold them."""
        return self.stabilizers(budget)

    # -- scoring -----------------------------------------------------------------------------------

    def observe(self, layer: int, queries: torch.Tensor | None, keys: torch.Tensor) -> None:
        """Called after each forward; `keys` holds the whole cache, the last queries.shape[2] are new."""

    def scores(self, layer: int, keys: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """[B, Hkv, L] importance of each cached entry (higher is kept); `positions` [B, Hkv, L]."""
        raise NotImplementedError

    def keep(self, layer: int, indices: torch.Tensor) -> None:
        """Gather per-entry state with the eviction indices [B, Hkv, K]."""
        for key, value in self.state[layer].items():
            self.state[layer][key] = value.gather(2, indices)

    # -- helpers for subclasses --------------------------------------------------------------------

    def _append(self, layer: int, key: str, new: torch.Tensor, total: int) -> None:
        """Append per-entry values [B, Hkv, n] for the new entries (static scores)."""
        old = self.state[layer].get(key)
        merged = new if old is None else torch.cat([old, new], dim=2)
        if merged.shape[2] != total:
            raise RuntimeError(f"{self.name}: state has {merged.shape[2]} entries, cache has {total}")
        self.state[layer][key] = merged
