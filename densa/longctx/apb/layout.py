"""Which tokens each host holds: settings, their checks, the split of the context into host blocks (contiguous
for Star/APB, zigzag for Ring) and the anchor a host prepends (Star: the first block; APB: BOS, the query,
then the first document tokens)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from densa.longctx.apb.errors import SequenceParallelError

METHODS = ("ring", "star", "apb")
PASSING = ("heads", "random", "none")


@dataclass(frozen=True)
class SPConfig:
    """Settings of one sequence-parallel prefill.

    anchor_len: tokens every host but host 0 prepends (star default: a whole block; apb default: block/4;
    0 = no anchor). passing_len: APB's compressed tokens per host and KV head (default block/8).
    passing: how APB picks them: `heads` (retaining heads, max-pooled), `random`, or `none` (nothing passed:
    Star with APB's anchor). query_in_anchor: APB's anchor holds BOS, then the query, then document tokens;
    False: the first document tokens only. anchor_prefix: document tokens kept before the query (BOS)."""

    method: str = "apb"
    anchor_len: int | None = None
    passing_len: int | None = None
    passing: str = "heads"
    query_in_anchor: bool = True
    anchor_prefix: int = 1
    pool_kernel: int = 5
    seed: int = 0

    def to_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Layout:
    """One host's view: its block's global positions, the anchor length and APB's passing length."""

    rank: int
    world: int
    context_len: int
    block: int  # tokens per host
    positions: torch.Tensor  # [block] global positions of this host's tokens (sorted)
    anchor_len: int  # 0 on host 0 and for ring
    passing_len: int  # 0 unless apb passes something


def resolve(config: SPConfig, context_len: int, query_len: int, rank: int, world: int) -> Layout:
    """Check `config` against the input and the world size; every message names the fix."""
    if config.method not in METHODS:
        raise SequenceParallelError(f"unknown method {config.method!r}: choose from {', '.join(METHODS)}")
    if config.passing not in PASSING:
        raise SequenceParallelError(f"unknown passing {config.passing!r}: choose from {', '.join(PASSING)}")
    parts = 2 * world if config.method == "ring" else world
    if context_len < parts or context_len % parts:
        why = f"zigzag ring splits it into 2·H = {parts} chunks" if config.method == "ring" else ""
        raise SequenceParallelError(
            f"the context of {context_len} tokens does not split evenly over {world} hosts"
            f" ({why or f'{parts} equal blocks'}): pad or trim it to a multiple of {parts}"
        )
    block = context_len // world
    if config.method == "ring":
        chunk = context_len // parts
        first = torch.arange(rank * chunk, (rank + 1) * chunk)
        second = torch.arange((parts - 1 - rank) * chunk, (parts - rank) * chunk)
        return Layout(rank, world, context_len, block, torch.cat([first, second]), 0, 0)
    default_anchor = block if config.method == "star" else block // 4
    anchor = default_anchor if config.anchor_len is None else config.anchor_len
    if not 0 <= anchor <= block:
        raise SequenceParallelError(f"anchor length {anchor} must be in 0..block ({block} tokens per host)")
    passing = 0
    if config.method == "apb" and config.passing != "none":
        passing = block // 8 if config.passing_len is None else config.passing_len
        if passing > block:
            raise SequenceParallelError(
                f"passing length {passing} is larger than the block of {block} tokens"
                f" ({context_len} tokens / {world} hosts): use at most {block}"
            )
        if passing < 0:
            raise SequenceParallelError(f"passing length must be >= 0, got {passing}")
        if config.pool_kernel < 1 or config.pool_kernel % 2 == 0:
            raise SequenceParallelError(
                f"pool kernel {config.pool_kernel} must be an odd number >= 1 (a stride-1 max-pool that keeps"
                " the block's length; 1 = no smoothing)"
            )
    holds_query = config.method == "apb" and config.query_in_anchor and anchor and world > 1
    if holds_query and anchor < config.anchor_prefix + query_len:
        raise SequenceParallelError(
            f"the anchor ({anchor} tokens) cannot hold {config.anchor_prefix} prefix tokens and the"
            f" {query_len}-token query: raise anchor_len or set query_in_anchor=False"
        )
    positions = torch.arange(rank * block, (rank + 1) * block)
    return Layout(rank, world, context_len, block, positions, anchor if rank else 0, passing)


def anchor_ids(
    config: SPConfig, layout: Layout, context: torch.Tensor, query: torch.Tensor | None
) -> torch.Tensor:
    """The anchor tokens [B, a] this host prepends (positions 0..a-1)."""
    a = layout.anchor_len
    if config.method == "apb" and config.query_in_anchor and query is not None and a:
        pre = config.anchor_prefix
        return torch.cat([context[:, :pre], query, context[:, pre : a - query.shape[1]]], dim=1)
    return context[:, :a]
