"""InfLLM (arXiv 2402.04617): training-free block memory, as a context manager that replaces attention.

Each execution block of `exc_block_size` queries attends, in two stages merged by log-sum-exp
(densa.kernels.two_stage_attention), to:
- local: the last `n_local` tokens of each query (sliding window, itself included) at exact RoPE distances;
- memory: the first `n_init` tokens (sinks), the `topk` memory units chosen for the block, and the tokens
  that left the window but do not yet fill a unit (the remainder), all outside the query's window. Their
  keys are stored unrotated and the queries rotated by one angle, so every memory token sits at the
  constant distance `memory_distance` (default n_local), a distance seen in training.

A memory unit is `block_size` consecutive tokens that left the window. Its representative key (per layer
and KV head) is the mean unrotated key of its `repr_topk` tokens with the largest local score: the local
attention mass they received (summed over the queries that saw them in the window and the heads of the
group). Lookup: the block's mean query, rotated to the memory distance, against every representative,
summed over the layer's heads (one selection per layer and batch row); the top-`topk` units are fetched
from the offload store through an LRU device cache (densa.longctx.infllm_memory).

When the whole input fits in the window nothing reaches memory and the result is full attention exactly.

`memory_positions="ordered"` (densa's extension, not the paper's): the constant distance loses the order of
the retrieved units (two occurrences of one key look alike), so instead the chosen units are laid out
contiguously in their original order just before the remainder, the sinks just before them, and the
queries, the window and the remainder keep their true positions (`ordered_positions`). A query's largest
memory distance is then below n_init + topk·block_size + block_size + exc_block_size + n_local, inside the
trained range when that is. Keys stay stored unrotated and are rotated at their assigned positions per
block; the lookup still scores representatives at the constant distance (the positions depend on the
choice). With topk ≥ all units the layout is the true one: full attention.
Ablations: `memory_positions="original"` rotates memory at its true positions (with topk ≥ all units this
is full attention again), `representative="mean"|"random"` replaces the top-mass choice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from densa.kernels.two_stage_attention import two_stage_attention_with_mass
from densa.longctx.errors import KVPolicyError
from densa.longctx.infllm_memory import UnitCache, UnitStore
from densa.models.rope import apply_rotary
from densa.models.transformer import Transformer

POSITIONS = ("constant", "ordered", "original")
REPRESENTATIVES = ("attention", "mean", "random")


@dataclass(frozen=True)
class InfLLMConfig:
    """InfLLM's settings; the defaults are the paper's (Mistral/Llama-3 configs)."""

    n_init: int = 128
    n_local: int = 4096
    block_size: int = 128
    repr_topk: int = 4
    topk: int = 16
    exc_block_size: int = 512
    max_cached_units: int = 32
    memory_distance: int | None = None
    """RoPE distance of every memory token; None = n_local."""
    memory_positions: str = "constant"
    representative: str = "attention"
    offload_device: str = "cpu"
    backend: str = "auto"
    seed: int = 0
    record_lookups: bool = False
    """Keep every lookup's chosen units (InfLLMStats.lookups), e.g. to measure unit recall."""

    def __post_init__(self) -> None:
        for name in ("n_local", "block_size", "repr_topk", "topk", "exc_block_size", "max_cached_units"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"infllm: {name} must be an integer ≥ 1, got {value!r}")
        if not isinstance(self.n_init, int) or self.n_init < 0:
            raise ValueError(f"infllm: n_init must be an integer ≥ 0, got {self.n_init!r}")
        if self.repr_topk > self.block_size:
            raise ValueError(
                f"infllm: repr_topk ({self.repr_topk}) must be ≤ block_size ({self.block_size}): "
                "a representative averages tokens of one unit"
            )
        if self.max_cached_units < self.topk:
            raise ValueError(
                f"infllm: max_cached_units ({self.max_cached_units}) must be ≥ topk ({self.topk}): "
                "one lookup's units must fit in the device cache"
            )
        if self.memory_distance is not None and self.memory_distance < 0:
            raise ValueError(f"infllm: memory_distance must be ≥ 0, got {self.memory_distance}")
        if self.memory_positions not in POSITIONS:
            raise ValueError(
                f"infllm: memory_positions must be one of {POSITIONS}, got {self.memory_positions!r}"
            )
        if self.representative not in REPRESENTATIVES:
            raise ValueError(
                f"infllm: representative must be one of {REPRESENTATIVES}, got {self.representative!r}"
            )
        if self.backend not in ("auto", "torch", "triton"):
            raise ValueError(f"infllm: backend must be auto, torch or triton, got {self.backend!r}")

    @property
    def distance(self) -> int:
        return self.n_local if self.memory_distance is None else self.memory_distance

    def attended_per_query(self) -> int:
        """The bound on keys one query attends: sinks + window + retrieved units + remainder."""
        return (
            self.n_init + self.n_local + self.topk * self.block_size + self.block_size + self.exc_block_size
        )


@dataclass
class InfLLMStats:
    tokens_seen: int = 0
    units: int = 0
    """Memory units formed (summed over layers)."""
    lookups: int = 0
    unit_loads: int = 0
    cache_hits: int = 0
    attended_sum: float = 0.0
    attended_count: int = 0
    attended_max: int = 0
    peak_device_tokens: int = 0
    """Most K/V entries one layer held on the compute device for one sequence (sinks + window and
    remainder + that row's cached units)."""
    offloaded_tokens: int = 0
    """K/V entries in the offload store (summed over layers) at the end."""
    lookup_log: list[dict] = field(default_factory=list)

    @property
    def attended_mean(self) -> float:
        return self.attended_sum / max(1, self.attended_count)

    @property
    def hit_rate(self) -> float:
        return self.cache_hits / max(1, self.cache_hits + self.unit_loads)

    def summary(self) -> dict:
        out = {
            k: v for k, v in vars(self).items() if k not in ("lookup_log", "attended_sum", "attended_count")
        }
        return out | {"attended_mean": self.attended_mean, "hit_rate": self.hit_rate}


def ordered_positions(
    n_sinks: int, recent_start: int, n_chosen: int, block_size: int, device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """`memory_positions="ordered"`: positions of the sinks [n_sinks] and of the chosen units' tokens
    [n_chosen · block_size] (units in the order given, i.e. ascending = original order): laid out
    contiguously, sinks then units, ending just before `recent_start`, the true position of the first
    token not in a unit (the remainder and the window follow at their true positions)."""
    unit_start = recent_start - n_chosen * block_size
    sinks = torch.arange(unit_start - n_sinks, unit_start, device=device)
    return sinks, torch.arange(unit_start, recent_start, device=device)


def unit_representative(
    keys: torch.Tensor, scores: torch.Tensor, cfg: InfLLMConfig, gen: torch.Generator
) -> torch.Tensor:
    """keys [B, Hkv, block, D] (unrotated), scores [B, Hkv, block] -> representative [B, Hkv, D]."""
    if cfg.representative == "mean":
        return keys.mean(dim=2)
    if cfg.representative == "random":
        pick = torch.randperm(keys.shape[2], generator=gen)[: cfg.repr_topk].to(keys.device)
        return keys[:, :, pick].mean(dim=2)
    idx = scores.topk(cfg.repr_topk, dim=-1).indices
    return keys.gather(2, idx[..., None].expand(-1, -1, -1, keys.shape[-1])).mean(dim=2)


class _LayerMemory:
    """One layer's state: sinks, the recent tokens not yet in a unit (window + remainder), the units."""

    def __init__(self, cfg: InfLLMConfig) -> None:
        self.cfg = cfg
        self.init_k = self.init_v = None
        self.recent_k = self.recent_v = self.recent_score = None
        self.recent_start = cfg.n_init  # position of the first recent token
        self.store = UnitStore(cfg.offload_device)
        self.caches: list[UnitCache] = []  # one per batch row
        self.reprs: torch.Tensor | None = None  # [B, Hkv, U, D], on the compute device

    def append(self, k: torch.Tensor, v: torch.Tensor, start: int) -> None:
        """New unrotated keys/values [B, Hkv, n, D] at positions start..start+n-1."""
        n_sink = max(0, min(k.shape[2], self.cfg.n_init - start))
        if n_sink:
            self.init_k = _cat(self.init_k, k[:, :, :n_sink])
            self.init_v = _cat(self.init_v, v[:, :, :n_sink])
        if n_sink < k.shape[2]:
            rest_k, rest_v = k[:, :, n_sink:], v[:, :, n_sink:]
            self.recent_k, self.recent_v = _cat(self.recent_k, rest_k), _cat(self.recent_v, rest_v)
            zeros = rest_k.new_zeros(rest_k.shape[:3], dtype=torch.float32)
            self.recent_score = _cat(self.recent_score, zeros)

    def context(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sinks then recent tokens: keys, values [B, Hkv, L, D] and positions [L]."""
        parts_k = [t for t in (self.init_k, self.recent_k) if t is not None]
        parts_v = [t for t in (self.init_v, self.recent_v) if t is not None]
        n_init = 0 if self.init_k is None else self.init_k.shape[2]
        n_recent = 0 if self.recent_k is None else self.recent_k.shape[2]
        device = parts_k[0].device
        pos = torch.cat(
            [
                torch.arange(n_init, device=device),
                torch.arange(self.recent_start, self.recent_start + n_recent, device=device),
            ]
        )
        return torch.cat(parts_k, 2), torch.cat(parts_v, 2), pos

    def keys_before(self, position: int) -> int:
        """How many keys of context() sit at positions < `position` (they are sorted by position)."""
        n_init = 0 if self.init_k is None else self.init_k.shape[2]
        n_recent = 0 if self.recent_k is None else self.recent_k.shape[2]
        return min(max(position, 0), n_init) + min(max(position - self.recent_start, 0), n_recent)

    def add_scores(self, mass: torch.Tensor, first: int) -> None:
        """mass [B, Hkv, L'] over context()[first:] (every earlier key received none): accumulate the
        recent tokens' part."""
        if self.recent_score is None:
            return
        n_init = 0 if self.init_k is None else self.init_k.shape[2]
        self.recent_score[:, :, max(0, first - n_init) :] += mass[:, :, max(0, n_init - first) :]

    def unitize(self, next_pos: int, gen: torch.Generator) -> int:
        """Turn every full block of tokens outside the next query's window into a unit; returns how many."""
        cfg, made = self.cfg, 0
        while self.recent_k is not None:
            outside = next_pos - cfg.n_local + 1 - self.recent_start
            if outside < cfg.block_size:
                break
            bs = cfg.block_size
            k, v, s = self.recent_k[:, :, :bs], self.recent_v[:, :, :bs], self.recent_score[:, :, :bs]
            self.store.add(k, v)
            rep = unit_representative(k.float(), s, cfg, gen)[:, :, None]
            self.reprs = _cat(self.reprs, rep)
            self.recent_k, self.recent_v = self.recent_k[:, :, bs:], self.recent_v[:, :, bs:]
            self.recent_score = self.recent_score[:, :, bs:]
            self.recent_start += bs
            made += 1
        return made

    def device_tokens(self) -> int:
        """K/V entries this layer holds on the device for one sequence (the fullest row's cache)."""
        held = sum(0 if t is None else t.shape[2] for t in (self.init_k, self.recent_k))
        return held + max((len(c) for c in self.caches), default=0) * self.cfg.block_size


def _cat(old: torch.Tensor | None, new: torch.Tensor) -> torch.Tensor:
    return new if old is None else torch.cat([old, new], dim=2)


class InfLLMContext:
    """Runs a densa Transformer (or an HF Llama-family model imported into one) under InfLLM.

    `forward(input_ids)` feeds [B, n] tokens (rows advance together), any n: they are split into
    execution blocks; returns logits [B, n, V]. Keeps its own memory, not a KVCache.
    """

    def __init__(self, model: Transformer, cfg: InfLLMConfig) -> None:
        if not isinstance(model, Transformer):
            raise KVPolicyError(f"kv policy 'infllm' needs a densa Transformer, got {type(model).__name__}")
        if getattr(model, "tp_size", 1) != 1:
            raise KVPolicyError("kv policy 'infllm' runs on one tensor-parallel rank (tp_size 1)")
        self.model, self.cfg = model, cfg
        self.layers = [_LayerMemory(cfg) for _ in model.layers]
        self.position = 0
        self.stats = InfLLMStats()
        self._gen = torch.Generator().manual_seed(cfg.seed)

    @torch.no_grad()
    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if input_ids.dim() != 2 or input_ids.shape[1] == 0:
            raise KVPolicyError(f"infllm: input_ids must be [B, n] with n ≥ 1, got {tuple(input_ids.shape)}")
        step = self.cfg.exc_block_size
        return torch.cat(
            [self._block(input_ids[:, s : s + step]) for s in range(0, input_ids.shape[1], step)], 1
        )

    def _block(self, ids: torch.Tensor) -> torch.Tensor:
        model, n = self.model, ids.shape[1]
        pos = torch.arange(self.position, self.position + n, device=ids.device)
        x = model.embed_tokens(ids)
        for i, block in enumerate(model.layers):
            x = x + self._attention(i, block.attn, block.attn_norm(x), pos)
            x = block.hook_resid(x + block.ffn(block.ffn_norm(x)))
        logits = nn.functional.linear(model.norm(x), model.output_weight)
        self.position += n
        self.stats.tokens_seen += n
        for mem in self.layers:
            self.stats.units += mem.unitize(self.position, self._gen)
        return logits

    def _lookup(self, layer: int, mem: _LayerMemory, q: torch.Tensor, start: int) -> torch.Tensor | None:
        """Units [B, k] for this block: mean query at the memory distance vs representatives, summed
        over the layer's heads."""
        if mem.reprs is None:
            return None
        batch, n_q, _, dim = q.shape
        n_kv = mem.reprs.shape[1]
        cos, sin = self.model.rope(torch.tensor([self.cfg.distance], device=q.device), torch.float32)
        q_mean = apply_rotary(q.float().mean(dim=2), cos, sin).view(batch, n_kv, n_q // n_kv, dim)
        scores = torch.einsum("bhgd,bhud->bu", q_mean, mem.reprs)
        chosen = scores.topk(min(self.cfg.topk, scores.shape[1]), dim=-1).indices.sort(dim=-1).values
        self.stats.lookups += 1
        if self.cfg.record_lookups:
            entry = {"position": start, "layer": layer, "n_units": scores.shape[1], "units": chosen.tolist()}
            self.stats.lookup_log.append(entry)
        return chosen

    def _attention(self, layer: int, attn: nn.Module, h: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        cfg, rope = self.cfg, self.model.rope
        batch, n, _ = h.shape
        n_q, n_kv, dim = attn.n_local_heads, attn.n_local_kv_heads, attn.head_dim
        qkv = attn.qkv_proj(h).view(batch, n, n_q + 2 * n_kv, dim).transpose(1, 2)
        q, k, v = qkv.split([n_q, n_kv, n_kv], dim=1)
        mem = self.layers[layer]
        mem.append(k, v, int(pos[0]))
        keys, values, key_pos = mem.context()
        # Keys are sorted by position, so the keys inside some query's window are a suffix [lo:] and
        # those at least n_local behind some query a prefix [:hi]; every other (query, key) pair is
        # masked in that stage, so each stage gets only its slice (the same softmax, fewer logits).
        first, last = int(pos[0]), int(pos[-1])
        lo, hi = mem.keys_before(first - cfg.n_local + 1), mem.keys_before(last - cfg.n_local + 1)
        cos_q, sin_q = rope(pos, q.dtype)
        cos_k, sin_k = rope(key_pos[lo:], keys.dtype)
        q_rot, k_rot = apply_rotary(q, cos_q, sin_q), apply_rotary(keys[:, :, lo:], cos_k, sin_k)
        dist = pos[:, None] - key_pos[None, lo:]  # [n, L - lo]
        local_mask = ((dist >= 0) & (dist < cfg.n_local)).expand(batch, n, -1)
        far_mask = (pos[:, None] - key_pos[None, :hi] >= cfg.n_local).expand(batch, n, -1)

        chosen = self._lookup(layer, mem, q, first)
        unit_pos = None  # "ordered": positions of the chosen units' tokens, shared by the rows
        if cfg.memory_positions == "constant":
            cos_d, sin_d = rope(torch.tensor([cfg.distance], device=q.device), q.dtype)
            q_mem, mem_keys = apply_rotary(q, cos_d, sin_d), [keys[:, :, :hi]]
        else:
            far, far_pos = keys[:, :, :hi], key_pos[:hi]
            if cfg.memory_positions == "ordered":
                n_sinks = 0 if mem.init_k is None else mem.init_k.shape[2]
                n_chosen = 0 if chosen is None else chosen.shape[1]
                sink_pos, unit_pos = ordered_positions(
                    n_sinks, mem.recent_start, n_chosen, cfg.block_size, q.device
                )
                far_pos = torch.cat([sink_pos, far_pos[n_sinks:]])[:hi]
            if hi:  # rope() needs at least one position
                far = apply_rotary(far, *rope(far_pos, keys.dtype))
            q_mem, mem_keys = q_rot, [far]
        mem_values, masks = [values[:, :, :hi]], [far_mask]
        if chosen is not None:
            uk, uv = self._gather_units(mem, chosen, q.device)
            if cfg.memory_positions == "original":
                unit_pos = (
                    cfg.n_init
                    + chosen[..., None] * cfg.block_size
                    + torch.arange(cfg.block_size, device=q.device)
                ).flatten(1)  # [B, k * block]: cos/sin [B, 1, k * block, D]
            if unit_pos is not None:
                uk = apply_rotary(uk, *rope(unit_pos, uk.dtype))
            mem_keys.append(uk)
            mem_values.append(uv)
            masks.append(torch.ones(batch, n, uk.shape[2], dtype=torch.bool, device=q.device))
        mem_mask = torch.cat(masks, dim=2)
        scale = 1.0 / math.sqrt(dim)
        out, _, mass = two_stage_attention_with_mass(
            q_rot, k_rot, values[:, :, lo:], local_mask,
            q_mem, torch.cat(mem_keys, 2), torch.cat(mem_values, 2), mem_mask,
            scale, backend=cfg.backend,
        )  # fmt: skip
        mem.add_scores(mass, lo)

        attended = local_mask.sum(-1) + mem_mask.sum(-1)  # [B, n]
        stats = self.stats
        stats.attended_sum += float(attended.float().sum())
        stats.attended_count += attended.numel()
        stats.attended_max = max(stats.attended_max, int(attended.max()))
        stats.peak_device_tokens = max(stats.peak_device_tokens, mem.device_tokens())
        out = attn.hook_out(out.transpose(1, 2).reshape(batch, n, n_q * dim))
        return attn.o_proj(out)

    def _gather_units(
        self, mem: _LayerMemory, chosen: torch.Tensor, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """K/V [B, Hkv, k * block, D] of each row's chosen units, through the LRU cache."""
        if not mem.caches:
            mem.caches = [UnitCache(self.cfg.max_cached_units) for _ in range(chosen.shape[0])]
        rows_k, rows_v = [], []
        for b, row in enumerate(chosen.tolist()):
            units = mem.caches[b].fetch(row, mem.store, device, row=b)
            rows_k.append(torch.cat([units[u][0] for u in row], dim=1))
            rows_v.append(torch.cat([units[u][1] for u in row], dim=1))
        return torch.stack(rows_k), torch.stack(rows_v)

    def finish(self) -> InfLLMStats:
        """Fold the per-layer counters into the stats and return them."""
        self.stats.unit_loads = sum(c.loads for m in self.layers for c in m.caches)
        self.stats.cache_hits = sum(c.hits for m in self.layers for c in m.caches)
        self.stats.offloaded_tokens = sum(m.store.tokens() for m in self.layers)
        return self.stats
