"""A sequence-parallel prefill and decode session on one host (one rank of H).

The model's own modules run layer by layer; only attention is replaced (`prefill_attention`). After
prefill a host keeps the KV of its own block only: Star's and APB's anchor and APB's passing block are
dropped. Decode (the query, then generated tokens) is Star-style on every method: each host attends its
cache, outputs and log-sum-exps are all-gathered and merged; the last host also holds the new tokens' KV and
alone computes logits. Ring's caches are exact, so Ring end to end equals full attention.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from densa.longctx.apb.comm import CountingComm
from densa.longctx.apb.errors import SequenceParallelError
from densa.longctx.apb.layout import Layout, SPConfig, anchor_ids, resolve
from densa.longctx.apb.lse_attention import attend, merge
from densa.longctx.apb.prefill_attention import apb_attention, ring_attention, select_passing, star_attention
from densa.models.rope import apply_rotary
from densa.models.transformer import Transformer
from densa.retaining_heads import RetainingHeads, detach_heads, get_heads, has_heads, load_heads
from densa.retaining_heads.heads import check_fits


class SequenceParallelSession:
    """Ring, Star or APB prefill of one batch of equal-length contexts over `comm`'s process group.

    Every rank is given the whole context (it reads its own block from it) and the query."""

    def __init__(
        self,
        model: Transformer,
        config: SPConfig,
        *,
        comm: CountingComm | None = None,
        heads: RetainingHeads | str | os.PathLike | None = None,
    ) -> None:
        self.model, self.config = model.eval(), config
        scored = config.method == "apb" and config.passing == "heads"
        self.heads = passing_heads(model, heads) if scored else None
        self.comm = comm or CountingComm()
        n_layers = model.config.n_layers
        self.cache: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * n_layers
        self.layout: Layout | None = None
        self.next_position = 0
        self.pairs: dict[str, list[int]] = {"prefill": [0] * n_layers, "decode": [0] * n_layers}
        self.ffn_tokens = {"prefill": 0, "decode": 0}
        self.seconds = {"prefill": 0.0, "decode": 0.0}

    @property
    def is_last(self) -> bool:
        return self.comm.rank == self.comm.world - 1

    def _qkv(self, layer: int, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        attn = self.model.layers[layer].attn
        batch, seq, _ = h.shape
        n_q, n_kv = attn.n_local_heads, attn.n_local_kv_heads
        raw = attn.qkv_proj(h)  # [B, T, (Hq + 2·Hkv)·D], pre-RoPE: what retaining heads read
        qkv = raw.view(batch, seq, n_q + 2 * n_kv, attn.head_dim).transpose(1, 2)
        q, k, v = qkv.split([n_q, n_kv, n_kv], dim=1)
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v, raw

    def _finish_layer(self, layer: int, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        block = self.model.layers[layer]
        x = x + block.attn.o_proj(out.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1))
        return x + block.ffn(block.ffn_norm(x))

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.model.norm(x), self.model.output_weight)

    @torch.no_grad()
    def prefill(
        self, context: torch.Tensor, query: torch.Tensor | None = None, *, return_logits: bool = False
    ) -> torch.Tensor | None:
        """context [B, N] (the same on every rank); query [B, Q] (APB puts it in the anchor). Returns this
        host's logits [B, block, V] at `self.layout.positions` when `return_logits`, else None."""
        start = time.perf_counter()
        cfg, comm = self.config, self.comm
        query_len = 0 if query is None else query.shape[1]
        layout = resolve(cfg, context.shape[1], query_len, comm.rank, comm.world)
        self.layout = layout
        device = context.device
        local_pos = layout.positions.to(device)
        ids = context[:, local_pos]
        positions = local_pos
        a = layout.anchor_len
        if a:
            ids = torch.cat([anchor_ids(cfg, layout, context, query), ids], dim=1)
            positions = torch.cat([torch.arange(a, device=device), local_pos])  # the anchor reuses 0..a-1
        x = self.model.embed_tokens(ids)
        cos, sin = self.model.rope(positions, x.dtype)
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + comm.rank)
        for layer, block in enumerate(self.model.layers):
            q, k, v, raw = self._qkv(layer, block.attn_norm(x), cos, sin)
            if cfg.method == "ring":
                out, pairs = ring_attention(q, k, v, layout, comm, layer)
            elif cfg.method == "star":
                out, pairs = star_attention(q, k, v)
            else:
                compressed = None
                if layout.passing_len:
                    scores = None
                    if cfg.passing == "heads":
                        head = self.heads.layers[layer]
                        scores = head(raw[:, a:].to(head.fc1.weight.dtype)).float()  # [B, Hkv, block]
                    lk, lv = k[:, :, a:], v[:, :, a:]
                    compressed = select_passing(scores, lk, lv, layout.passing_len, cfg.pool_kernel, gen)
                out, pairs = apb_attention(q, k, v, compressed, layout, comm, layer)
            self.pairs["prefill"][layer] = pairs
            self.cache[layer] = (k[:, :, a:].contiguous(), v[:, :, a:].contiguous())  # anchor/passing dropped
            x = self._finish_layer(layer, x, out)
        self.ffn_tokens["prefill"] = ids.shape[1]
        self.next_position = context.shape[1]
        self.seconds["prefill"] += time.perf_counter() - start
        return self._logits(x[:, a:]) if return_logits else None

    @torch.no_grad()
    def decode(self, ids: torch.Tensor) -> torch.Tensor | None:
        """Feed ids [B, n] after the context (the query, or generated tokens): logits [B, n, V] on the
        last host, None on the others."""
        if self.layout is None:
            raise RuntimeError("prefill first")
        start = time.perf_counter()
        n = ids.shape[1]
        positions = torch.arange(self.next_position, self.next_position + n, device=ids.device)
        x = self.model.embed_tokens(ids)
        cos, sin = self.model.rope(positions, x.dtype)
        for layer, block in enumerate(self.model.layers):
            q, k, v, _ = self._qkv(layer, block.attn_norm(x), cos, sin)
            keys, values = self.cache[layer]
            allowed = None
            if self.is_last:  # only the last host keeps the new tokens' KV
                allowed = torch.ones(n, keys.shape[2] + n, dtype=torch.bool, device=ids.device)
                allowed[:, keys.shape[2] :] = allowed[:, keys.shape[2] :].tril()
                keys, values = torch.cat([keys, k], dim=2), torch.cat([values, v], dim=2)
                self.cache[layer] = (keys, values)
            out, lse = attend(q, keys, values, allowed)
            self.pairs["decode"][layer] += int(allowed.sum()) if allowed is not None else n * keys.shape[2]
            packed = torch.cat([out.float(), lse.unsqueeze(-1)], dim=-1)  # [B, Hq, n, D + 1]
            parts = self.comm.all_gather(packed, "decode", layer)
            out = merge([p[..., :-1] for p in parts], [p[..., -1] for p in parts])[0].to(x.dtype)
            x = self._finish_layer(layer, x, out)
        self.next_position += n
        self.ffn_tokens["decode"] += n
        self.seconds["decode"] += time.perf_counter() - start
        return self._logits(x) if self.is_last else None

    @torch.no_grad()
    def generate(self, query: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        """Greedy: the query, then `max_new_tokens` tokens; the last host picks each and broadcasts it.
        Returns the new ids [B, max_new_tokens] on every rank."""
        logits = self.decode(query)
        new = []
        for _ in range(max_new_tokens):
            token = torch.zeros(query.shape[0], 1, dtype=torch.long, device=query.device)
            if self.is_last:
                token = logits[:, -1:].argmax(-1)
            token = self.comm.broadcast(token, self.comm.world - 1, "decode")
            new.append(token)
            if len(new) < max_new_tokens:
                logits = self.decode(token)
        return torch.cat(new, dim=1) if new else query[:, :0]

    def counters(self) -> dict[str, Any]:
        """This host's counters: bytes per layer and phase, attention pairs per layer (per sequence and
        head), FFN tokens, KV tokens held after prefill, seconds."""
        layout = self.layout
        n_layers = self.model.config.n_layers
        return {
            "rank": self.comm.rank,
            "world_size": self.comm.world,
            "method": self.config.method,
            "block": layout.block if layout else None,
            "anchor_len": layout.anchor_len if layout else None,
            "passing_len": layout.passing_len if layout else None,
            "bytes_per_layer": self.comm.per_layer(n_layers),
            "bytes_total": self.comm.totals(),
            "attention_pairs_per_layer": self.pairs,
            "ffn_tokens": dict(self.ffn_tokens),
            "kv_tokens_held": self.cache[0][0].shape[2] if self.cache[0] is not None else 0,
            "seconds": dict(self.seconds),
        }


def gather_counters(
    session: SequenceParallelSession, extra: dict[str, Any] | None = None
) -> list[dict[str, Any]] | None:
    """Every host's counters (plus `extra`) on rank 0, None elsewhere; bookkeeping, not counted."""
    import torch.distributed as dist

    mine = session.counters() | (extra or {})
    out: list[Any] | None = [None] * session.comm.world if session.comm.rank == 0 else None
    dist.gather_object(mine, out, dst=0, group=session.comm.group)
    return out


def passing_heads(model: Transformer, heads: RetainingHeads | str | os.PathLike | None) -> RetainingHeads:
    """The retaining heads APB scores with, checked against the model (the heads fingerprint): a heads file
    (`save_heads`), a RetainingHeads module, or None for the heads attached to the model."""
    if heads is None:
        if not has_heads(model):
            raise SequenceParallelError(
                "APB with passing='heads' needs retaining heads trained for this model: give a heads file"
                " (--heads FILE; densa.retaining_heads.save_heads), attach them to the model, or choose"
                " passing='random' or 'none'"
            )
        return get_heads(model)
    if isinstance(heads, RetainingHeads):
        check_fits(heads.model_fields, model.config, what="retaining heads")
        return heads
    if not Path(heads).is_file():
        raise SequenceParallelError(f"retaining heads file {heads} does not exist")
    if has_heads(model):
        raise SequenceParallelError("the model already has retaining heads: give heads=None to use them")
    load_heads(model, heads)  # checks the fingerprint, names differing config fields
    return detach_heads(model)
