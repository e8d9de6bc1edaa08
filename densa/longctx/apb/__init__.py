"""Sequence-parallel long-context prefill over torch.distributed (gloo on CPU, NCCL on GPU): exact Ring
attention (zigzag), Star attention, and APB (anchor with the query, compressed passing blocks chosen by
retaining heads, one all-gather per layer), each with Star-style distributed decode and counted
collectives. See docs/apb.md."""

from densa.longctx.apb.comm import CountingComm
from densa.longctx.apb.errors import SequenceParallelError
from densa.longctx.apb.layout import METHODS, PASSING, SPConfig
from densa.longctx.apb.lse_attention import attend, merge
from densa.longctx.apb.session import SequenceParallelSession, gather_counters, passing_heads

__all__ = [
    "METHODS",
    "PASSING",
    "CountingComm",
    "SPConfig",
    "SequenceParallelError",
    "SequenceParallelSession",
    "attend",
    "gather_counters",
    "merge",
    "passing_heads",
]
