"""SSD's settings: the `ssd:` recipe section and `SSDCallback`'s config are this one dataclass.

Torch-free on purpose: the recipe schema (`densa.config.schema`) imports it, and the recipe loader reads
its field types (Literal choices, with did-you-mean) and docstrings (docs/config_reference.md) from here.
Rules about one field live in `problems()` (used by `__post_init__` and by the recipe checks); rules that
need the rest of the recipe (model.ffn_dim, parallel.*, train.steps) are in `densa.config.checks`.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Literal

from densa.sparse_moe.errors import MoEError

StabilityMetric = Literal["ari", "overlap"]
ClusterMethod = Literal["kmeans", "random", "contiguous"]
RouterKind = Literal["centroid", "mlp"]

METRICS: tuple[str, ...] = typing.get_args(StabilityMetric)
METHODS: tuple[str, ...] = typing.get_args(ClusterMethod)
ROUTERS: tuple[str, ...] = typing.get_args(RouterKind)


@dataclass(frozen=True, kw_only=True)
class SSDConfig:
    """Switchable sparse-dense learning (docs/ssd.md): tp = 1; ZeRO 0-2 in fp32, ZeRO 1-2 in bf16."""

    enabled: bool = False
    """Run the SSD callback: re-cluster FFN neurons into experts and switch between dense and MoE training.
    (Recipe switch only: an `SSDCallback` built in Python always runs.)"""
    num_experts: int = 16
    """Experts per FFN layer; must divide model.ffn_dim."""
    top_k: int = 4
    """Experts each token uses in sparse mode (1 ≤ top_k ≤ num_experts)."""
    interval: int = 100
    """Steps between re-clusterings (and stability checks) in dense mode; 0: only at switch_steps."""
    stability_metric: StabilityMetric = "ari"
    """Clustering stability between consecutive re-clusterings: ari (adjusted Rand index) or overlap."""
    stability_threshold: float = 0.9
    """Switch to sparse once the mean stability over layers reaches this value."""
    switch_steps: tuple[int, ...] = ()
    """Completed-step counts at which the mode toggles regardless of stability."""
    sparse_steps: int = 500
    """Length of each sparse phase; 0: until the next switch step or the final dense phase."""
    final_dense_fraction: float = 0.2
    """The last fraction of train.steps is always dense (in [0, 1])."""
    method: ClusterMethod = "kmeans"
    """Neuron clustering: kmeans (balanced, warm-started), random or contiguous."""
    router: RouterKind = "centroid"
    """Router of the sparse phases: centroid (SSD) or mlp (MoEfication)."""
    router_lr: float = 1e-3
    """Adam LR of the routers in sparse mode (0: routers stay at their centroid initialisation)."""
    kmeans_iters: int = 50
    """Balanced k-means iterations per re-clustering."""
    seed: int = 0
    """Seed of the clustering."""

    def problems(self) -> list[tuple[str, str]]:
        """(field, message) for every rule about a single field that this config breaks."""
        out = []
        for name, choices in (
            ("stability_metric", METRICS),
            ("method", METHODS),
            ("router", ROUTERS),
        ):
            value = getattr(self, name)
            if value not in choices:
                out.append((name, f"{value!r} is not one of {', '.join(choices)}"))
        if self.num_experts < 1:
            out.append(("num_experts", f"must be > 0, got {self.num_experts}"))
        elif not 1 <= self.top_k <= self.num_experts:
            out.append(("top_k", f"must be in 1..ssd.num_experts ({self.num_experts}), got {self.top_k}"))
        for name in ("interval", "sparse_steps", "kmeans_iters"):
            if getattr(self, name) < 0:
                out.append((name, f"must be >= 0, got {getattr(self, name)}"))
        if not 0.0 <= self.final_dense_fraction <= 1.0:
            out.append(("final_dense_fraction", f"must be in [0, 1], got {self.final_dense_fraction}"))
        if self.router_lr < 0:
            out.append(("router_lr", f"must be >= 0, got {self.router_lr}"))
        return out

    def __post_init__(self) -> None:
        found = self.problems()
        if found:  # the recipe loader turns "ssd.FIELD: ..." into a problem at that dotted path
            name, message = found[0]
            raise MoEError(f"ssd.{name}: {message}")
