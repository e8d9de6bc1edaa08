"""Hardware affinity of activation patterns (ReLU² Wins): token-to-token reuse and co-activation chunking.

Inputs are boolean active sets: [num_seqs, seq_len, ffn_dim] for reuse (token order matters) and
[num_tokens, ffn_dim] for chunking.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def token_reuse(active: torch.Tensor, windows: Sequence[int] = (1, 4, 16)) -> dict[int, float]:
    """For each window w: mean over tokens t ≥ 1 (with a non-empty active set) of
    |S_t ∩ (S_{t−w} ∪ … ∪ S_{t−1})| / |S_t|, the window truncated at the sequence start.

    1 − reuse is the fraction of a token's neurons loaded anew with a w-token sliding-window cache.
    """
    if active.dim() == 2:
        active = active.unsqueeze(0)
    act = active.bool()
    counts = torch.cat(
        [torch.zeros_like(act[:, :1], dtype=torch.int32), act.int().cumsum(1, dtype=torch.int32)], 1
    )
    size = act.sum(-1)  # [S, T]
    seq_len = act.shape[1]
    out = {}
    for w in windows:
        if w < 1:
            raise ValueError(f"window must be >= 1, got {w}")
        t = torch.arange(1, seq_len)
        start = (t - w).clamp_min(0)
        # neuron i was active somewhere in [start, t) iff counts[t] - counts[start] > 0
        seen = (counts[:, t] - counts[:, start]) > 0
        reused = (seen & act[:, 1:]).sum(-1).float()
        valid = size[:, 1:] > 0
        frac = reused[valid] / size[:, 1:][valid].float()
        out[int(w)] = float(frac.mean()) if frac.numel() else float("nan")
    return out


def blocks_touched(active: torch.Tensor, block_size: int, order: torch.Tensor | None = None) -> float:
    """Mean fraction of contiguous `block_size`-neuron blocks with at least one active neuron per token."""
    act = active.bool()
    if order is not None:
        act = act[:, order]
    n = act.shape[1]
    if n % block_size:
        raise ValueError(f"ffn_dim {n} is not divisible by block size {block_size}")
    return float(act.reshape(act.shape[0], n // block_size, block_size).any(-1).float().mean())


def coactivation_order(
    active: torch.Tensor, block_size: int, *, iters: int = 10, seed: int = 0
) -> torch.Tensor:
    """Neuron permutation grouping co-activated neurons into blocks: balanced k-means on activation patterns.

    Each neuron is its (normalised) activation pattern over tokens; clusters hold exactly `block_size`
    neurons (greedy capacity-constrained assignment, most confident neurons first), and the permutation
    lists them cluster by cluster.
    """
    x = active.float().T  # [ffn_dim, tokens]
    n = x.shape[0]
    if n % block_size:
        raise ValueError(f"ffn_dim {n} is not divisible by block size {block_size}")
    k = n // block_size
    x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-6)
    gen = torch.Generator().manual_seed(seed)
    centroids = x[torch.randperm(n, generator=gen)[:k]].clone()
    assign = torch.arange(n) // block_size
    for _ in range(iters):
        sim = x @ centroids.T  # [n, k]
        new = _balanced_assign(sim, block_size)
        if torch.equal(new, assign):
            break
        assign = new
        centroids = torch.zeros_like(centroids).index_add_(0, assign, x) / block_size
    return torch.cat([torch.nonzero(assign == c).flatten() for c in range(k)])


def _balanced_assign(sim: torch.Tensor, capacity: int) -> torch.Tensor:
    n, k = sim.shape
    free = torch.full((k,), capacity)
    assign = torch.empty(n, dtype=torch.long)
    sim = sim.clone()
    for i in sim.max(1).values.argsort(descending=True).tolist():
        c = int(sim[i].argmax())
        assign[i] = c
        free[c] -= 1
        if free[c] == 0:
            sim[:, c] = float("-inf")
    return assign


def chunking(
    active: torch.Tensor, block_sizes: Sequence[int] = (4, 8, 16), *, iters: int = 10, seed: int = 0
) -> list[dict[str, float]]:
    """Blocks touched per token, as a fraction of all blocks, for the original order, the co-activation order
    and the independent-neuron baseline 1 − s^g (s = sparsity)."""
    s = 1.0 - float(active.float().mean())
    rows = []
    for g in block_sizes:
        order = coactivation_order(active, g, iters=iters, seed=seed)
        rows.append(
            {
                "block_size": g,
                "original": blocks_touched(active, g),
                "reordered": blocks_touched(active, g, order),
                "independent": 1.0 - s**g,
            }
        )
    return rows
