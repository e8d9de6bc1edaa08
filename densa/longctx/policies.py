"""The KV policies: full, StreamingLLM, H2O, SnapKV, random, Locret (and InfLLM, which replaces attention:
infllm_policy.py), plus `build_policy(name, **kw)`."""

from __future__ import annotations

import difflib
import inspect
import math
import os

import torch
import torch.nn.functional as F

from densa.longctx.errors import KVPolicyError
from densa.longctx.infllm_policy import InfLLMPolicy
from densa.longctx.policy import KVPolicy
from densa.models.transformer import Transformer
from densa.retaining_heads.errors import RetainingHeadsError


def attention_probs(queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Softmax attention of the last n cache entries' queries [B, Hq, n, D] over keys [B, Hkv, L, D].

    Returns [B, Hkv, G, n, L]. Query i is cache entry L - n + i, so it sees entries ≤ L - n + i: the
    causal mask works in cache order, whatever positions the entries carry.
    """
    batch, n_q, n, dim = queries.shape
    n_kv, total = keys.shape[1], keys.shape[2]
    q = queries.float().view(batch, n_kv, n_q // n_kv, n, dim)
    logits = torch.einsum("bghnd,bgld->bghnl", q, keys.float()) / math.sqrt(dim)
    key_idx = torch.arange(total, device=keys.device)
    query_idx = torch.arange(total - n, total, device=keys.device)
    logits = logits.masked_fill(key_idx[None, :] > query_idx[:, None], -math.inf)
    return logits.softmax(dim=-1)


class FullPolicy(KVPolicy):
    """No eviction (the upper bound)."""

    name = "full"
    evicts = False

    def scores(self, layer: int, keys: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return torch.zeros(positions.shape, device=keys.device)


class StreamingLLMPolicy(KVPolicy):
    """The first `n_sink` tokens plus the most recent window (the rest of the budget)."""

    name = "streaming_llm"

    def __init__(self, n_sink: int = 4, n_stabilizers: int = 0) -> None:
        super().__init__(n_stabilizers)
        if n_sink < 0:
            raise ValueError(f"streaming_llm: n_sink must be ≥ 0, got {n_sink}")
        self.n_sink = n_sink

    def reserved(self, budget: int) -> int:
        return self.n_sink + self.stabilizers(budget)

    def scores(self, layer: int, keys: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        recency = positions.float()
        return recency.masked_fill(positions < self.n_sink, math.inf)


class RandomPolicy(KVPolicy):
    """A static random score per entry (seeded): the floor any informed policy must beat."""

    name = "random"

    def __init__(self, seed: int = 0, n_stabilizers: int = 0) -> None:
        super().__init__(n_stabilizers)
        self.seed = seed

    def reset(self, n_layers: int) -> None:
        super().reset(n_layers)
        self._gen = torch.Generator().manual_seed(self.seed)

    def observe(self, layer: int, queries: torch.Tensor | None, keys: torch.Tensor) -> None:
        old = self.state[layer].get("score")
        n = keys.shape[2] - (0 if old is None else old.shape[2])
        new = torch.rand((keys.shape[0], keys.shape[1], n), generator=self._gen).to(keys.device)
        self._append(layer, "score", new, keys.shape[2])

    def scores(self, layer: int, keys: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.state[layer]["score"]


class H2OPolicy(KVPolicy):
    """Heavy hitters: attention received so far (summed over queries, mean over the KV group), divided
    by the number of queries that could see the entry; plus a recent window (`recent_ratio` of the budget)."""

    name = "h2o"
    needs_queries = True

    def __init__(self, recent_ratio: float = 0.5, n_stabilizers: int | None = None) -> None:
        super().__init__(n_stabilizers or 0)
        if not 0 <= recent_ratio <= 1:
            raise ValueError(f"h2o: recent_ratio must be in [0, 1], got {recent_ratio}")
        self.recent_ratio = recent_ratio
        self._explicit = n_stabilizers is not None

    def stabilizers(self, budget: int) -> int:
        return self.n_stabilizers if self._explicit else int(self.recent_ratio * budget)

    def observe(self, layer: int, queries: torch.Tensor | None, keys: torch.Tensor) -> None:
        assert queries is not None
        n, total = queries.shape[2], keys.shape[2]
        received = attention_probs(queries, keys).sum(dim=3).mean(dim=2)  # [B, Hkv, L]
        seen_by = torch.arange(total, device=keys.device)
        seen_by = (total - seen_by).clamp(max=n).to(received.dtype).expand_as(received)
        state = self.state[layer]
        for key, add in (("acc", received), ("count", seen_by)):
            old = state.get(key)
            pad = add.new_zeros(add.shape[0], add.shape[1], n)
            state[key] = add + (pad if old is None else torch.cat([old, pad], dim=2))

    def scores(self, layer: int, keys: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        state = self.state[layer]
        return state["acc"] / state["count"].clamp_min(1.0)


class SnapKVPolicy(KVPolicy):
    """Mean attention from the last `window` queries (the observation window), average-pooled over
    `kernel` neighbours; the window itself is always kept. Chunk-local: the window is the latest tokens."""

    name = "snapkv"
    needs_queries = True

    def __init__(self, window: int = 8, kernel: int = 5, n_stabilizers: int = 0) -> None:
        super().__init__(n_stabilizers)
        if window < 1 or kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"snapkv: window must be ≥ 1 and kernel odd ≥ 1, got {window}, {kernel}")
        self.window, self.kernel = window, kernel

    def reset(self, n_layers: int) -> None:
        super().reset(n_layers)
        self._queries: list[torch.Tensor | None] = [None] * n_layers

    def stabilizers(self, budget: int) -> int:
        # The window's queries index the last cache entries, so those entries must survive.
        return max(self.n_stabilizers, self.window)

    def observe(self, layer: int, queries: torch.Tensor | None, keys: torch.Tensor) -> None:
        assert queries is not None
        old = self._queries[layer]
        merged = queries if old is None else torch.cat([old, queries], dim=2)
        self._queries[layer] = merged[:, :, -self.window :].detach()

    def scores(self, layer: int, keys: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        window = self._queries[layer]
        score = attention_probs(window, keys).mean(dim=(2, 3))  # [B, Hkv, L]
        batch, heads, total = score.shape
        pooled = F.avg_pool1d(
            score.view(batch * heads, 1, total), self.kernel, 1, self.kernel // 2, count_include_pad=False
        )
        return pooled.view(batch, heads, total)


class LocretPolicy(KVPolicy):
    """Static scores from the model's retaining heads (computed when an entry enters the cache).

    n_sink > 0 also keeps the first n_sink tokens whatever their score: the attention sink of models whose
    inputs carry no BOS, which heads trained briefly can rank low (benchmarks/results/locret_smollm2.md).
    """

    name = "locret"

    def __init__(
        self, n_stabilizers: int = 4, heads: str | os.PathLike | None = None, n_sink: int = 0
    ) -> None:
        super().__init__(n_stabilizers)
        if n_sink < 0:
            raise ValueError(f"locret: n_sink must be ≥ 0, got {n_sink}")
        self.heads_path = heads
        self.n_sink = n_sink
        self._heads = None
        self._model: Transformer | None = None
        self._displaced = None  # heads the file's heads replaced for this session
        self._loaded = False

    def reserved(self, budget: int) -> int:
        return self.n_sink + self.stabilizers(budget)

    def bind(self, model: Transformer) -> None:
        """Use the heads in `heads` (the file) when given, else the heads attached to the model. Heads the
        file displaces are put back at `unbind`: the file is what this policy runs, never stale heads."""
        from densa.retaining_heads import attach_heads, detach_heads, get_heads, has_heads, load_heads
        from densa.retaining_heads.heads import check_fits

        self._model, self._displaced, self._loaded = model, None, False
        try:
            if self.heads_path is not None:
                self._displaced = detach_heads(model) if has_heads(model) else None
                try:
                    load_heads(model, self.heads_path)
                except Exception:
                    if self._displaced is not None:
                        attach_heads(model, self._displaced)
                        self._displaced = None
                    raise
                self._loaded = True
            heads = get_heads(model)
            check_fits(heads.model_fields, model.config, what="the attached retaining heads")
        except RetainingHeadsError as err:
            raise RetainingHeadsError(f"kv policy 'locret': {err}") from None
        heads.enabled = True
        self._heads = heads

    def unbind(self) -> None:
        from densa.retaining_heads import attach_heads, detach_heads

        model = self._model
        if model is not None and self._loaded:
            detach_heads(model)
            if self._displaced is not None:
                attach_heads(model, self._displaced)
        self._model, self._displaced, self._loaded = None, None, False
        self._heads = None

    def observe(self, layer: int, queries: torch.Tensor | None, keys: torch.Tensor) -> None:
        new = self._heads.scores[layer]
        if new is None:
            raise RuntimeError("locret: the retaining heads produced no score in the last forward")
        self._append(layer, "score", new.detach().float(), keys.shape[2])
        self._heads.scores[layer] = None

    def scores(self, layer: int, keys: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        score = self.state[layer]["score"]
        return score.masked_fill(positions < self.n_sink, math.inf) if self.n_sink else score


POLICIES: dict[str, type[KVPolicy]] = {
    cls.name: cls
    for cls in (
        FullPolicy,
        StreamingLLMPolicy,
        H2OPolicy,
        SnapKVPolicy,
        RandomPolicy,
        LocretPolicy,
        InfLLMPolicy,
    )
}
ALIASES = {"streamingllm": "streaming_llm", "streaming": "streaming_llm", "heavy_hitter": "h2o"}


def build_policy(name: str, **kwargs: object) -> KVPolicy:
    """A policy by name (`full`, `streaming_llm`, `h2o`, `snapkv`, `random`, `locret`, `infllm`) and its
    options."""
    key = ALIASES.get(name.lower().replace("-", "_"), name.lower().replace("-", "_"))
    if key not in POLICIES:
        hint = difflib.get_close_matches(key, POLICIES, n=1)
        extra = f"; did you mean {hint[0]!r}?" if hint else ""
        raise KVPolicyError(f"unknown kv policy {name!r}: choose from {sorted(POLICIES)}{extra}")
    cls = POLICIES[key]
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise KVPolicyError(f"kv policy {key!r} has no option(s) {unknown}; it accepts {accepted}")
    try:
        return cls(**kwargs)  # type: ignore[arg-type]
    except ValueError as err:
        raise KVPolicyError(str(err)) from None
