"""MoEfication: split an FFN's neurons into E equal experts.

A neuron is one row of the gate projection (gated FFNs; the up row with the same index goes with it) or of
the up projection (plain FFNs), plus the matching column of down_proj. The default split is balanced
k-means on the L2-normalised rows (MoEfication's ParamSplit); random and contiguous splits are baselines.
SSD re-clusters periodically, warm-started from the previous labels; `cluster_ffn` runs warm and fresh
and keeps the lower inertia, as the SSD reference does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from densa.sparse_moe.balanced_kmeans import balanced_kmeans, cluster_means
from densa.sparse_moe.config import METHODS  # one definition (config.py), re-exported
from densa.sparse_moe.errors import MoEError, check_experts


@dataclass(frozen=True)
class Clustering:
    """One layer's split of neurons into experts, in the FFN's current neuron order."""

    labels: torch.Tensor
    """[ffn_dim] int64 expert of each neuron; each expert has exactly ffn_dim / E neurons."""
    centroids: torch.Tensor
    """[E, dim] float32 mean of each expert's normalised rows (router initialisation)."""
    inertia: float
    """Σ ‖row - centroid‖² over normalised rows (lower: tighter experts)."""
    row_norm: float
    """Mean norm of the clustered (unnormalised) rows: the router's scale."""
    method: str

    @property
    def num_experts(self) -> int:
        return self.centroids.shape[0]

    def permuted(self, perm: torch.Tensor) -> Clustering:
        """The same clustering after the neurons were reordered by `perm` (new[i] = old[perm[i]])."""
        return Clustering(
            self.labels[perm.to(self.labels.device)], self.centroids, self.inertia, self.row_norm, self.method
        )


def neuron_rows(ffn: nn.Module) -> torch.Tensor:
    """[ffn_dim, dim] each neuron's input direction: its gate row (gated FFNs) or up row (plain)."""
    if getattr(ffn, "gated", False):
        weight = ffn.gate_up_proj.weight
        return weight[: weight.shape[0] // 2]
    return ffn.up_proj.weight


def expert_permutation(labels: torch.Tensor) -> torch.Tensor:
    """Neuron order that makes every expert a contiguous block: expert 0's neurons first (stable)."""
    return torch.sort(labels, stable=True).indices


def split_neurons(
    rows: torch.Tensor,
    num_experts: int,
    *,
    method: str = "kmeans",
    previous: torch.Tensor | None = None,
    seed: int = 0,
    iters: int = 50,
) -> Clustering:
    """Split `rows` [ffn_dim, dim] into `num_experts` equal experts.

    method: kmeans (balanced k-means on normalised rows; with `previous` labels it runs warm and fresh
    and keeps the lower inertia), random (a seeded balanced random split) or contiguous (neuron i goes to
    expert i // m, the layout the FFN already has).
    """
    if method not in METHODS:
        raise MoEError(f"unknown MoEfication method {method!r}; choose from {METHODS}")
    n = rows.shape[0]
    size = check_experts(n, num_experts)
    with torch.no_grad():
        points = F.normalize(rows.detach().double(), dim=1)
        row_norm = float(rows.detach().double().norm(dim=1).mean())
        if method == "contiguous":
            labels = torch.arange(n, device=rows.device) // size
        elif method == "random":
            gen = torch.Generator().manual_seed(seed)
            labels = (torch.randperm(n, generator=gen) % num_experts).to(rows.device)
        else:
            best = balanced_kmeans(points, num_experts, seed=seed, iters=iters)
            if previous is not None:
                if previous.shape != (n,):
                    raise MoEError(f"previous labels have shape {tuple(previous.shape)}, expected ({n},)")
                warm = balanced_kmeans(points, num_experts, init_labels=previous, iters=iters)
                if warm.inertia <= best.inertia:
                    best = warm
            labels = best.labels
        centroids = cluster_means(points, labels, num_experts)
        value = float((points - centroids[labels]).square().sum())
    return Clustering(labels.long(), centroids.float(), value, row_norm, method)


def cluster_ffn(
    ffn: nn.Module,
    num_experts: int,
    *,
    method: str = "kmeans",
    previous: Clustering | None = None,
    seed: int = 0,
    iters: int = 50,
) -> Clustering:
    """`split_neurons` on one FFN module's neuron rows."""
    prev = previous.labels if previous is not None else None
    return split_neurons(neuron_rows(ffn), num_experts, method=method, previous=prev, seed=seed, iters=iters)
