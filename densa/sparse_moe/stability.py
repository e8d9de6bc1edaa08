"""How much a clustering changed between two checks: adjusted Rand index and assignment overlap.

Both compare two labelings of the same neurons (same order) and ignore how clusters are numbered.
SSD switches to sparse mode when the co-activation structure has stopped moving, i.e. when consecutive
clusterings agree (high ARI).
"""

from __future__ import annotations

import torch

from densa.sparse_moe.config import METRICS  # one definition (config.py), re-exported


def contingency(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[Ka, Kb] counts n_ij of items with label i in `a` and label j in `b` (labels 0..K-1)."""
    if a.shape != b.shape or a.dim() != 1:
        raise ValueError(f"labelings must be 1-D and equally long, got {tuple(a.shape)} and {tuple(b.shape)}")
    a, b = a.long().cpu(), b.long().cpu()
    ka, kb = int(a.max()) + 1, int(b.max()) + 1
    return torch.bincount(a * kb + b, minlength=ka * kb).reshape(ka, kb).double()


def _pairs(x: torch.Tensor) -> torch.Tensor:
    return (x * (x - 1) / 2).sum()


def adjusted_rand_index(a: torch.Tensor, b: torch.Tensor) -> float:
    """Hubert-Arabie ARI: 1 for identical partitions, ~0 for independent ones, negative below chance.

    ARI = (Σ C(n_ij,2) − E) / (½[Σ C(a_i,2) + Σ C(b_j,2)] − E), E = Σ C(a_i,2)·Σ C(b_j,2) / C(n,2).
    Degenerate cases (both all-in-one or both all-singletons) count as identical, as in scikit-learn.
    """
    table = contingency(a, b)
    n = float(table.sum())
    index = _pairs(table)
    rows, cols = _pairs(table.sum(1)), _pairs(table.sum(0))
    expected = rows * cols / (n * (n - 1) / 2) if n > 1 else torch.tensor(0.0)
    max_index = (rows + cols) / 2
    if float(max_index - expected) == 0.0:
        return 1.0
    return float((index - expected) / (max_index - expected))


def assignment_overlap(a: torch.Tensor, b: torch.Tensor) -> float:
    """Share of items whose cluster in `b` is the best match of their cluster in `a` (purity, in [0, 1])."""
    table = contingency(a, b)
    return float(table.max(1).values.sum() / table.sum())


def stability(a: torch.Tensor, b: torch.Tensor, metric: str = "ari") -> float:
    if metric == "ari":
        return adjusted_rand_index(a, b)
    if metric == "overlap":
        return assignment_overlap(a, b)
    raise ValueError(f"unknown stability metric {metric!r}; choose from {METRICS}")
