"""Functional experts: do MoEfication's experts concentrate the neurons specialised for one function?

Partitions of each layer's neurons into E equal experts, all from `densa.sparse_moe.split_neurons`:
- param: MoEfication's parameter clustering (balanced k-means on the normalised gate/up rows);
- coact: co-activation clustering (balanced k-means on each neuron's normalised |activation| pattern over
  the probe tokens: neurons that fire together land together; MoEfication clusters a co-activation graph
  with METIS, which is not available here, so the same balanced k-means runs on the patterns instead);
- random: seeded balanced random splits, the control.

For each label, the top `top_fraction` of a layer's neurons by predictivity are counted per expert; an
expert is functional for the label when a one-sided hypergeometric test rejects "the top neurons fall in
experts at random" at `alpha` (the paper: top 1%, p ≤ 0.001). Modularisation extent is the mean of
count / expected over the functional experts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from densa.analysis.errors import AnalysisError
from densa.sparse_moe import split_neurons
from densa.sparse_moe.moefication import neuron_rows

PARTITIONS = ("param", "coact", "random")


def hypergeom_sf(k: int, population: int, successes: int, draws: int) -> float:
    """P(X ≥ k) for X ~ Hypergeometric(population N, successes K, draws n), exact (log-gamma sums)."""

    def log_comb(a: int, b: int) -> float:
        return math.lgamma(a + 1) - math.lgamma(b + 1) - math.lgamma(a - b + 1)

    lo, hi = max(k, 0, draws - (population - successes)), min(successes, draws)
    if lo > hi:
        return 0.0
    total = log_comb(population, draws)
    terms = [
        log_comb(successes, i) + log_comb(population - successes, draws - i) - total
        for i in range(lo, hi + 1)
    ]
    top = max(terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms))


def check_experts(ffn_dim: int, num_experts: int) -> int:
    """Expert size m; refuses an expert count that does not divide the FFN width."""
    if num_experts < 2 or ffn_dim % num_experts:
        raise AnalysisError(
            f"--experts {num_experts} does not divide the FFN width {ffn_dim} into equal experts of at least "
            f"one neuron (choose a divisor of {ffn_dim} ≥ 2)"
        )
    return ffn_dim // num_experts


def layer_partitions(
    ffn: nn.Module,
    patterns: torch.Tensor,
    num_experts: int,
    *,
    random_seeds: int = 5,
    seed: int = 0,
    param_seeds: int = 1,
) -> dict[str, list[torch.Tensor]]:
    """{"param": [labels per seed], "coact": [labels], "random": [labels per seed]} for one FFN layer.

    patterns: [n_tokens, ffn_dim] activations on calibration tokens (co-activation clustering input).
    param_seeds: parameter clusterings with k-means seeds seed, seed + 1, ... (their spread is the
    clustering's own noise).
    """
    rows = neuron_rows(ffn).detach().float()
    check_experts(rows.shape[0], num_experts)
    return {
        "param": [split_neurons(rows, num_experts, seed=seed + s).labels for s in range(param_seeds)],
        "coact": [split_neurons(coactivation_points(patterns, seed), num_experts, seed=seed).labels],
        "random": [
            split_neurons(rows, num_experts, method="random", seed=seed + s).labels
            for s in range(random_seeds)
        ],
    }


def coactivation_points(patterns: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """[ffn_dim, n_tokens] each neuron's normalised |activation| pattern, plus a 1e-3 seeded jitter.

    Dead neurons (all-zero patterns) are identical points; the jitter makes them distinct, so they fall
    into experts at random rather than by the tie order of the assignment.
    """
    points = torch.nn.functional.normalize(patterns.abs().T.double(), dim=1)
    gen = torch.Generator().manual_seed(seed)
    return points + 1e-3 * torch.randn(points.shape, generator=gen, dtype=torch.float64)


def top_neurons(predictivity: torch.Tensor, top_fraction: float) -> torch.Tensor:
    """[num_labels, ffn_dim] bool: each label's `top_fraction` most predictive neurons (at least one)."""
    k = max(1, round(top_fraction * predictivity.shape[1]))
    idx = predictivity.nan_to_num(0.0).topk(k, dim=1).indices
    return torch.zeros_like(predictivity, dtype=torch.bool).scatter_(1, idx, True)


@dataclass(frozen=True)
class ExpertConcentration:
    counts: torch.Tensor
    """[num_labels, E] top neurons of each label in each expert."""
    expected: float
    """Top neurons per expert under a random placement."""
    p_values: torch.Tensor
    """[num_labels, E] one-sided hypergeometric P(count ≥ observed)."""
    functional: torch.Tensor
    """[num_labels, E] bool p ≤ alpha."""

    @property
    def functional_fraction(self) -> float:
        """Share of (label, expert) pairs that are functional."""
        return float(self.functional.float().mean())

    @property
    def expert_fraction(self) -> float:
        """Share of experts functional for at least one label."""
        return float(self.functional.any(0).float().mean())

    @property
    def extent(self) -> float:
        """Mean count / expected over functional pairs (NaN when there are none)."""
        if not bool(self.functional.any()):
            return float("nan")
        return float(self.counts[self.functional].double().mean() / self.expected)


def concentration(
    top: torch.Tensor, labels: torch.Tensor, num_experts: int, alpha: float
) -> ExpertConcentration:
    """Count each label's top neurons per expert of the partition `labels` [ffn_dim] and test them."""
    n_labels, ffn_dim = top.shape
    size = ffn_dim // num_experts
    counts = torch.zeros(n_labels, num_experts, dtype=torch.long)
    for j in range(n_labels):
        counts[j] = torch.bincount(labels[top[j]], minlength=num_experts)
    draws = top.sum(1).tolist()
    p = torch.tensor(
        [[hypergeom_sf(int(c), ffn_dim, size, int(draws[j])) for c in counts[j]] for j in range(n_labels)],
        dtype=torch.float64,
    )
    return ExpertConcentration(counts, float(draws[0]) * size / ffn_dim, p, p <= alpha)


def expert_ranking(conc: ExpertConcentration, label: int) -> list[int]:
    """Experts ordered by how strongly they concentrate `label`'s top neurons (lowest p, then count)."""
    keys = [
        (float(conc.p_values[label, e]), -int(conc.counts[label, e]), e) for e in range(conc.counts.shape[1])
    ]
    return [e for _p, _c, e in sorted(keys)]
