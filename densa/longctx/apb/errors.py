"""Errors of sequence-parallel prefill (Ring, Star, APB)."""

from densa.errors import DensaError


class SequenceParallelError(DensaError):
    """Bad sequence-parallel settings, or a peer process that died or timed out."""
