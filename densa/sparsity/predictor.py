"""Deja Vu-style low-rank predictors of active FFN neurons (ReLU² Wins' predictivity axis).

Per layer, a bias-free linear map d → r → ffn_dim (no nonlinearity) reads the FFN input and predicts which
neurons will be active. Loss: BCE with Deja Vu's reweighting, w = (fraction of positives) + 0.005, positives
weighted 1 − w and negatives w. Decision: probability ≥ 0.5.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from densa.sparsity.apply import neuron_thresholds
from densa.sparsity.calibration import collect_ffn, log


class LowRankPredictor(nn.Module):
    def __init__(self, dim: int, ffn_dim: int, rank: int) -> None:
        super().__init__()
        self.down = nn.Linear(dim, rank, bias=False)
        self.up = nn.Linear(rank, ffn_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [..., ffn_dim]."""
        return self.up(self.down(x))

    @property
    def cost_ratio(self) -> float:
        """Predictor FLOPs relative to one dim × ffn_dim FFN matrix: r(d + d_ff) / (d · d_ff)."""
        d, r, f = self.down.in_features, self.down.out_features, self.up.out_features
        return r * (d + f) / (d * f)


@dataclass
class PredictorMetrics:
    layer: int
    rank: int
    recall: float
    """Fraction of truly active neurons the predictor selects (missed ones are computed as zero)."""
    precision: float
    true_sparsity: float
    """Fraction of inactive (token, neuron) pairs in the labels."""
    predicted_sparsity: float
    """Sparsity left after prediction: fraction of pairs the predictor does not select."""
    average_precision: float
    """Area under the precision-recall curve (ranking quality, independent of the 0.5 cut)."""

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def reweighted_bce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    w = labels.float().mean() + 0.005
    weight = torch.where(labels, 1.0 - w, w)
    return F.binary_cross_entropy_with_logits(logits, labels.float(), weight=weight)


def average_precision(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """AP = mean over positives of the precision at their rank (scores sorted descending)."""
    order = scores.reshape(-1).argsort(descending=True)
    hits = labels.reshape(-1)[order].float()
    if hits.sum() == 0:
        return float("nan")
    precision_at = hits.cumsum(0) / torch.arange(1, hits.numel() + 1)
    return float((precision_at * hits).sum() / hits.sum())


def evaluate_predictor(
    predictor: nn.Module, x: torch.Tensor, labels: torch.Tensor, layer: int = 0
) -> PredictorMetrics:
    with torch.no_grad():
        logits = predictor(x)
    pred = logits >= 0  # sigmoid ≥ 0.5
    tp = (pred & labels).sum().item()
    return PredictorMetrics(
        layer=layer,
        rank=predictor.down.out_features,
        recall=tp / max(labels.sum().item(), 1),
        precision=tp / max(pred.sum().item(), 1),
        true_sparsity=1.0 - labels.float().mean().item(),
        predicted_sparsity=1.0 - pred.float().mean().item(),
        average_precision=average_precision(logits, labels),
    )


def train_predictor(
    x: torch.Tensor,
    labels: torch.Tensor,
    rank: int,
    *,
    epochs: int = 20,
    lr: float = 1e-3,
    weight_decay: float = 0.01,
    batch_size: int = 1024,
    val_fraction: float = 0.05,
    patience: int = 5,
    seed: int = 0,
    layer: int = 0,
) -> tuple[LowRankPredictor, PredictorMetrics]:
    """Fit one layer's predictor on FFN inputs [n, dim] and active labels [n, ffn_dim] (bool).

    Metrics are measured on the held-out `val_fraction`.

    Early stopping as in Deja Vu: `patience` epochs without validation-loss improvement, or recall > 0.99.
    """
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(x.shape[0], generator=gen)
    n_val = max(1, int(round(val_fraction * x.shape[0])))
    val, tr = perm[:n_val], perm[n_val:]
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LowRankPredictor(x.shape[1], labels.shape[1], rank)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    best_loss, best_state, stale = float("inf"), None, 0
    for _ in range(epochs):
        order = tr[torch.randperm(tr.numel(), generator=gen)]
        for start in range(0, order.numel(), batch_size):
            idx = order[start : start + batch_size]
            loss = reweighted_bce(model(x[idx]), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            val_loss = float(reweighted_bce(model(x[val]), labels[val]))
        if val_loss < best_loss:
            best_loss, best_state, stale = val_loss, {k: v.clone() for k, v in model.state_dict().items()}, 0
        else:
            stale += 1
        if stale >= patience or evaluate_predictor(model, x[val], labels[val]).recall > 0.99:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    return model, evaluate_predictor(model, x[val], labels[val], layer)


def fit_predictors(
    model: nn.Module,
    seqs: torch.Tensor,
    rank: int,
    *,
    layer_thresholds: Sequence[float] | None = None,
    max_tokens: int | None = 8192,
    batch_size: int = 8,
    seed: int = 0,
    **train_kwargs,
) -> tuple[list[LowRankPredictor], list[PredictorMetrics]]:
    """Train one predictor per FFN layer on the dense model's FFN inputs over `seqs` [N, seq_len + 1].

    Labels are "active": |a_i| above the per-neuron threshold of `layer_thresholds` (e.g. a CETT-0.2 search,
    `report.thresholds`), or a_i ≠ 0 when None (natural sparsity of ReLU-family models).
    """
    if rank < 1:
        raise ValueError(f"predictor rank must be >= 1, got {rank}")
    records = collect_ffn(model, seqs, max_tokens=max_tokens, inputs=True, batch_size=batch_size, seed=seed)
    per_neuron = neuron_thresholds(model, layer_thresholds) if layer_thresholds is not None else None
    predictors, metrics = [], []
    for j, (x, a) in enumerate(zip(records.inputs, records.acts)):
        thr = per_neuron[j] if per_neuron is not None else 0.0
        log.info("predictor: layer %d/%d", j + 1, len(records.acts))
        predictor, m = train_predictor(x, a.abs() > thr, rank, seed=seed, layer=j, **train_kwargs)
        predictors.append(predictor)
        metrics.append(m)
    return predictors, metrics


def predictivity(model: nn.Module, seqs: torch.Tensor, rank: int, **kwargs: Any) -> list[PredictorMetrics]:
    """Held-out metrics of one predictor per FFN layer: `fit_predictors` (same arguments) without the
    predictors themselves."""
    return fit_predictors(model, seqs, rank, **kwargs)[1]
