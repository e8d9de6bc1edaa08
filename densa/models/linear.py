"""Linear-layer factory: plain `nn.Linear` at tp = 1, megatron-core parallel layers at tp > 1.

Column-parallel layers split output features across tensor-parallel ranks, row-parallel layers split
input features and all-reduce the result. Fused projections (QKV, gate+up) keep each rank's shard as
the concatenation of its local pieces, so the model splits them with local sizes either way.
"""

from __future__ import annotations

from torch import nn


def column_linear(in_features: int, out_features: int, *, bias: bool, tp_size: int) -> nn.Module:
    """y = x Wᵀ with W's rows (output features) split across `tp_size` ranks."""
    if tp_size == 1:
        return nn.Linear(in_features, out_features, bias=bias)
    from densa.models.parallel import column_parallel_linear

    return column_parallel_linear(in_features, out_features, bias=bias)


def row_linear(in_features: int, out_features: int, *, bias: bool, tp_size: int) -> nn.Module:
    """y = x Wᵀ with W's columns (input features) split across ranks; outputs are all-reduced."""
    if tp_size == 1:
        return nn.Linear(in_features, out_features, bias=bias)
    from densa.models.parallel import row_parallel_linear

    return row_parallel_linear(in_features, out_features, bias=bias)
