"""MoEfication, the MoE FFN as a permutation view of the dense FFN, SSD switching, routers, MoE inference.

from densa.sparse_moe import cluster_ffn, to_sparse, to_dense, SSDCallback, SSDConfig
"""

from densa.sparse_moe.balanced_kmeans import KMeansResult, balanced_assignment, balanced_kmeans
from densa.sparse_moe.errors import MoEError
from densa.sparse_moe.inference import load_moe, moefy, perplexity, perplexity_vs_top_k, save_moe
from densa.sparse_moe.moe_ffn import MoEFeedForward
from densa.sparse_moe.moefication import Clustering, cluster_ffn, expert_permutation, split_neurons
from densa.sparse_moe.router import (
    CentroidRouter,
    MLPRouter,
    expert_activation_mass,
    routing_coverage,
    train_router,
)
from densa.sparse_moe.ssd import SSDCallback, SSDConfig
from densa.sparse_moe.stability import adjusted_rand_index, assignment_overlap
from densa.sparse_moe.switching import (
    check_optimizer,
    is_sparse,
    permute_ffn_,
    permute_optimizer_state_,
    set_top_k,
    to_dense,
    to_sparse,
)

__all__ = [
    "CentroidRouter",
    "Clustering",
    "KMeansResult",
    "MLPRouter",
    "MoEError",
    "MoEFeedForward",
    "SSDCallback",
    "SSDConfig",
    "adjusted_rand_index",
    "assignment_overlap",
    "balanced_assignment",
    "balanced_kmeans",
    "check_optimizer",
    "cluster_ffn",
    "expert_activation_mass",
    "expert_permutation",
    "is_sparse",
    "load_moe",
    "moefy",
    "permute_ffn_",
    "permute_optimizer_state_",
    "perplexity",
    "perplexity_vs_top_k",
    "routing_coverage",
    "save_moe",
    "set_top_k",
    "split_neurons",
    "to_dense",
    "to_sparse",
    "train_router",
]
