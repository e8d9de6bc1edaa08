"""One layer's prefill attention on one host, per method. Each takes the host's post-RoPE q/k/v of its
tokens (Star/APB: [anchor | local], Ring: its two zigzag chunks) and returns the attention output and the
number of (query, key) token pairs it scored (per sequence and head), the analytic cost counter.

- ring: exact. The host's KV block travels H - 1 steps around the ring; each received block is scored under
  the causal mask of global positions and merged by log-sum-exp. Zigzag chunks give every host the same
  number of unmasked pairs.
- star: [anchor | local] causally; no communication.
- apb: every host compresses its local KV to `passing_len` tokens per KV head (retaining-head scores,
  max-pooled; or random), one all-gather per layer; host i prepends the blocks of hosts 0..i-1 (the passing
  block P). Keys [P | anchor | local], queries [anchor | local]: anchor queries see the anchor causally and
  not P; local queries see all of P and the anchor, and their own block causally.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from densa.longctx.apb.comm import CountingComm
from densa.longctx.apb.layout import Layout
from densa.longctx.apb.lse_attention import attend, merge


def ring_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: Layout, comm: CountingComm, layer: int
) -> tuple[torch.Tensor, int]:
    n_kv = k.shape[1]
    block = torch.cat([k, v], dim=1)  # [B, 2·Hkv, T, D]: one message per step
    pos_q = layout.positions
    outs, lses, pairs = [], [], 0
    src = layout.rank
    for step in range(layout.world):
        pos_k = _zigzag_positions(layout, src)
        allowed = (pos_k.unsqueeze(0) <= pos_q.unsqueeze(1)).to(q.device)  # [Tq, Tk] causal, global positions
        count = int(allowed.sum())
        if count:  # zigzag: a block from a later host may be entirely in this host's future
            mask = None if count == allowed.numel() else allowed
            out, lse = attend(q, block[:, :n_kv], block[:, n_kv:], mask)
            outs.append(out)
            lses.append(lse)
            pairs += count
        if step < layout.world - 1:
            block = comm.ring_exchange(block, "prefill", layer)
            src = (src - 1) % layout.world
    return merge(outs, lses)[0], pairs


def _zigzag_positions(layout: Layout, rank: int) -> torch.Tensor:
    parts = 2 * layout.world
    chunk = layout.context_len // parts
    first = torch.arange(rank * chunk, (rank + 1) * chunk)
    return torch.cat([first, torch.arange((parts - 1 - rank) * chunk, (parts - rank) * chunk)])


def star_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, int]:
    """[anchor | local] causally (host 0: its block alone)."""
    seq = q.shape[2]
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=q.shape[1] != k.shape[1])
    return out, seq * (seq + 1) // 2


def select_passing(
    scores: torch.Tensor | None,
    k: torch.Tensor,
    v: torch.Tensor,
    length: int,
    pool: int,
    gen: torch.Generator | None,
) -> torch.Tensor:
    """Top-`length` local tokens per KV head -> [B, 2·Hkv, length, D] (keys then values, positional order).

    scores [B, Hkv, T] (None: random choice from `gen`); max-pooled with kernel `pool`, stride 1, so a
    token next to a high-scoring one is kept too (APB's smoothing of the retaining-head scores)."""
    batch, n_kv, seq, dim = k.shape
    if scores is None:
        scores = torch.rand(batch, n_kv, seq, generator=gen).to(k.device)
        pool = 1
    idx = passing_indices(scores, length, pool).unsqueeze(-1).expand(-1, -1, -1, dim)
    return torch.cat([k.gather(2, idx), v.gather(2, idx)], dim=1)


def passing_indices(scores: torch.Tensor, length: int, pool: int) -> torch.Tensor:
    """scores [B, Hkv, T] -> the top-`length` positions per KV head after the max-pool, sorted."""
    batch, n_kv, seq = scores.shape
    pooled = F.max_pool1d(scores.reshape(batch * n_kv, 1, seq), pool, stride=1, padding=pool // 2)
    return pooled.reshape(batch, n_kv, seq).topk(length, dim=-1).indices.sort(dim=-1).values


def apb_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    compressed: torch.Tensor | None,
    layout: Layout,
    comm: CountingComm,
    layer: int,
) -> tuple[torch.Tensor, int]:
    """`compressed`: this host's [B, 2·Hkv, l_p, D] (None: nothing passed)."""
    a, seq = layout.anchor_len, q.shape[2]
    n_kv = k.shape[1]
    passing = k.new_zeros(k.shape[0], 2 * n_kv, 0, k.shape[3])
    if compressed is not None:
        blocks = comm.all_gather(compressed, "prefill", layer)  # every host gets every block: one collective
        passing = torch.cat([passing, *blocks[: layout.rank]], dim=2)
    p = passing.shape[2]
    allowed = torch.zeros(seq, p + seq, dtype=torch.bool, device=q.device)
    # [anchor | local] causally; local queries also see the whole passing block, anchor queries do not
    allowed[:, p:] = torch.ones(seq, seq, dtype=torch.bool, device=q.device).tril()
    allowed[a:, :p] = True
    keys = torch.cat([passing[:, :n_kv], k], dim=2)
    values = torch.cat([passing[:, n_kv:], v], dim=2)
    out, _ = attend(q, keys, values, allowed)
    return out, int(allowed.sum())
