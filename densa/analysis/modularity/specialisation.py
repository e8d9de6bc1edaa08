"""Neuron specialisation: how well each FFN neuron's activation alone predicts each function's label.

Average precision (AP) of the activation as a score for a binary label is computed the way
`sklearn.metrics.average_precision_score` does, ties included: AP = Σ_n (R_n − R_{n−1}) P_n over the
distinct score thresholds n. The paper takes max(AP(a, y), AP(a, 1 − y)) on balanced tasks; our labels
are one-vs-rest with low prevalence, where AP(a, 1 − y) ≈ 1 − prevalence for any neuron, so a neuron's
predictivity here is max(AP(a, y), AP(−a, y)): it may signal a function by firing or by going quiet.

A neuron is specialised for a label when its predictivity exceeds the `quantile` of the predictivities
that the same layer's neurons reach on shuffled labels (same prevalence, no relation to the input);
the shuffled baseline applies the same threshold to other shuffles.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def _tie_ends(sorted_s: torch.Tensor) -> torch.Tensor:
    """[n, m] index of the last position of each position's tie group in a sorted column."""
    n = sorted_s.shape[0]
    is_end = torch.ones_like(sorted_s, dtype=torch.bool)
    is_end[:-1] = sorted_s[:-1] != sorted_s[1:]
    idx = torch.arange(n, device=sorted_s.device)[:, None]
    return torch.where(is_end, idx, n).flip(0).cummin(0).values.flip(0)


class Ranking:
    """Scores [n, m] sorted once per column, then scored against any number of labelings.

    Each example keeps, per column, the 1-based rank of the end of its tie group, descending (and
    ascending, for −scores). The precision at a positive's threshold is then (positives ranked at or
    before that end) / end, which needs only the positives' ranks: O(P log P · m) per label.
    """

    def __init__(self, scores: torch.Tensor) -> None:
        if scores.dim() == 1:
            scores = scores[:, None]
        sorted_s, order = scores.float().sort(dim=0, descending=True, stable=True)
        self.end_rank = []
        for s_sorted, o in ((sorted_s, order), (sorted_s.flip(0), order.flip(0))):
            per_example = torch.empty_like(o, dtype=torch.int32)
            per_example.scatter_(0, o, (_tie_ends(s_sorted) + 1).int())
            self.end_rank.append(per_example)

    def average_precision(self, labels: torch.Tensor, *, negate: bool = False) -> torch.Tensor:
        """[m] AP of each column (of −column with `negate`) for binary `labels` [n]; NaN without positives."""
        ends = self.end_rank[int(negate)]
        rows = labels.reshape(-1).bool().to(ends.device).nonzero().flatten()
        if rows.numel() == 0:
            return torch.full((ends.shape[1],), float("nan"))
        e = ends[rows].T.contiguous().sort(dim=1).values  # [m, P] positives' tie-end ranks
        tp = torch.searchsorted(e, e, right=True)
        return (tp.float() / e.float()).mean(1)

    def predictivity(self, labels: torch.Tensor) -> torch.Tensor:
        """max(AP(a, y), AP(−a, y)) per column."""
        return torch.maximum(self.average_precision(labels), self.average_precision(labels, negate=True))


def average_precision(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """AP of every column of `scores` [n, m] (or of a score vector [n]) for binary `labels` [n].

    Equal scores form one threshold: every positive in the tie gets the precision at the tie's end.
    """
    ap = Ranking(scores).average_precision(labels)
    return ap[0] if scores.dim() == 1 else ap


def predictivity(acts: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """max(AP(a, y), AP(−a, y)) per neuron; acts [n, m], labels [n] bool → [m]."""
    return Ranking(acts).predictivity(labels)


def label_predictivity(ranking: Ranking, labels: torch.Tensor, num_labels: int) -> torch.Tensor:
    """[num_labels, m]: each label one-vs-rest (label −1 examples are negatives for all)."""
    return torch.stack([ranking.predictivity(labels == j) for j in range(num_labels)])


def shuffled(labels: torch.Tensor, seed: int) -> torch.Tensor:
    return labels[torch.randperm(labels.numel(), generator=torch.Generator().manual_seed(seed))]


@dataclass(frozen=True)
class Specialisation:
    """One family in one layer."""

    predictivity: torch.Tensor
    """[num_labels, ffn_dim] real-label predictivity."""
    threshold: torch.Tensor
    """[num_labels] the shuffled-label `quantile` each label's specialised neurons exceed."""
    specialised: torch.Tensor
    """[num_labels, ffn_dim] bool."""
    fraction: float
    """Share of neurons specialised for at least one label of the family."""
    baseline: list[float]
    """The same share with each baseline shuffle's labels (one value per shuffle)."""
    per_label: list[float]
    """Share of neurons specialised for each label."""
    baseline_per_label: list[float]
    """Mean over baseline shuffles of the share per label (≈ 1 − quantile by construction)."""


def layer_specialisation(
    acts: torch.Tensor,
    labels: torch.Tensor,
    num_labels: int,
    *,
    quantile: float = 0.99,
    threshold_shuffles: int = 1,
    baseline_shuffles: int = 2,
    seed: int = 0,
) -> Specialisation:
    """Predictivity on real labels, the shuffled-label threshold, and specialised shares vs baseline."""
    ranking = Ranking(acts)
    real = label_predictivity(ranking, labels, num_labels)
    null = torch.cat(
        [
            label_predictivity(ranking, shuffled(labels, seed + k), num_labels)
            for k in range(threshold_shuffles)
        ],
        dim=1,
    )
    threshold = torch.quantile(null.nan_to_num(0.0), quantile, dim=1)
    specialised = real > threshold[:, None]
    base, base_labels = [], []
    for k in range(baseline_shuffles):
        fake = label_predictivity(ranking, shuffled(labels, seed + 1000 + k), num_labels) > threshold[:, None]
        base.append(float(fake.any(0).float().mean()))
        base_labels.append(fake.float().mean(1))
    return Specialisation(
        predictivity=real,
        threshold=threshold,
        specialised=specialised,
        fraction=float(specialised.any(0).float().mean()),
        baseline=base,
        per_label=specialised.float().mean(1).tolist(),
        baseline_per_label=torch.stack(base_labels).mean(0).tolist(),
    )
