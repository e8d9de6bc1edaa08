"""MoEfication, the MoE FFN as a permutation view of the dense FFN, SSD switching, routers, MoE inference.

from densa.sparse_moe import cluster_ffn, to_sparse, to_dense, SSDCallback, SSDConfig

Names are loaded on first use (PEP 562): `densa.sparse_moe.config` (the `ssd:` recipe section, which the
recipe schema imports) must not pull in torch, so `densa check` stays fast.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

_WHERE = {
    "KMeansResult": "balanced_kmeans",
    "balanced_assignment": "balanced_kmeans",
    "balanced_kmeans": "balanced_kmeans",
    "MoEError": "errors",
    "activated_params": "inference",
    "load_moe": "inference",
    "moefy": "inference",
    "perplexity": "inference",
    "perplexity_vs_top_k": "inference",
    "save_moe": "inference",
    "MoEFeedForward": "moe_ffn",
    "Clustering": "moefication",
    "cluster_ffn": "moefication",
    "expert_permutation": "moefication",
    "split_neurons": "moefication",
    "CentroidRouter": "router",
    "MLPRouter": "router",
    "expert_activation_mass": "router",
    "routing_coverage": "router",
    "train_router": "router",
    "SSDCallback": "ssd",
    "SSDConfig": "config",
    "adjusted_rand_index": "stability",
    "assignment_overlap": "stability",
    "check_optimizer": "switching",
    "is_sparse": "switching",
    "permute_ffn_": "switching",
    "permute_optimizer_state_": "switching",
    "set_top_k": "switching",
    "to_dense": "switching",
    "to_sparse": "switching",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'densa.sparse_moe' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"densa.sparse_moe.{_WHERE[name]}"), name)
    globals()[name] = value  # the next lookup skips __getattr__
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])


class _Package(types.ModuleType):
    """Importing a submodule binds its name on the package: for `balanced_kmeans`, the name of both a
    submodule and its function, keep the function (what `from densa.sparse_moe import balanced_kmeans`
    has always given)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and name in _WHERE and hasattr(value, name):
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
