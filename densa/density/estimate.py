"""The two-step estimation over a scored reference series, and a model's density with bootstrap intervals.

`fit_reference(rows, performance, d0)` fits L(N, D) on the reference rows and S(L) on reference +
performance rows with the `holdout` lowest-loss rows held out and predicted (the paper's triangles); its
JSON-ready dict is what `densa density train-reference` writes. `estimate_density(ref, N, loss, score)`
inverts S → L̂ → N̂ at D0 and returns ρ = N̂ / N, plus ρ_L (N̂ from the measured loss directly, skipping the
sigmoid), each with a percentile bootstrap interval over resampled reference points.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from densa.density.fit import DensityError, LossLaw, Sigmoid, fit_loss_law, fit_sigmoid


def _law(rows: Sequence[dict], start: LossLaw | None = None) -> LossLaw:
    return fit_loss_law([r["N"] for r in rows], [r["D"] for r in rows], [r["loss"] for r in rows], start)


def _sigmoid(
    rows: Sequence[dict], start: Sigmoid | None = None, bounds: tuple[float, float] | None = None
) -> Sigmoid:
    return fit_sigmoid([r["loss"] for r in rows], [r["score"] for r in rows], start, bounds)


def fit_reference(
    rows: Sequence[dict],
    performance: Sequence[dict] = (),
    *,
    d0: float,
    holdout: int = 2,
    score_bounds: tuple[float, float] | None = None,
) -> dict[str, Any]:
    """Rows are dicts with name, N, D, loss, score. Returns points, both fits, held-out predictions, D0.
    `score_bounds` keeps the sigmoid's asymptotes inside them (densa's scores are accuracies: (0, 1))."""
    law = _law(rows)
    pool = sorted([*rows, *performance], key=lambda r: r["loss"])
    held, fit_rows = pool[:holdout], pool[holdout:]
    sig = _sigmoid(fit_rows, bounds=score_bounds)
    heldout = [
        {
            "name": r["name"],
            "loss": r["loss"],
            "score": r["score"],
            "predicted": float(sig.predict(r["loss"])),
        }
        for r in held
    ]
    return {
        "d0": d0,
        "reference": [dict(r) for r in rows],
        "performance": [dict(r) for r in performance],
        "sigmoid_points": [r["name"] for r in fit_rows],
        "loss_law": asdict(law),
        "sigmoid": asdict(sig),
        "heldout": heldout,
    }


@dataclass(frozen=True)
class Reference:
    d0: float
    rows: tuple[dict, ...]
    sigmoid_rows: tuple[dict, ...]
    law: LossLaw
    sigmoid: Sigmoid

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Reference:
        every = {r["name"]: r for r in [*data["reference"], *data.get("performance", [])]}
        sig_rows = tuple(every[n] for n in data["sigmoid_points"])
        law = LossLaw(**{**data["loss_law"], "residuals": tuple(data["loss_law"]["residuals"])})
        sig_data = {**data["sigmoid"], "residuals": tuple(data["sigmoid"]["residuals"])}
        if sig_data.get("bounds"):  # JSON has a list
            sig_data["bounds"] = tuple(sig_data["bounds"])
        sig = Sigmoid(**sig_data)
        return cls(float(data["d0"]), tuple(data["reference"]), sig_rows, law, sig)


@dataclass(frozen=True)
class Density:
    n_params: float
    loss: float
    score: float
    loss_hat: float
    """L̂(S): the loss a reference model scoring S has, from the inverted sigmoid."""
    n_hat: float
    """N̂: effective parameter size (reference N reaching L̂ at D0)."""
    rho: float
    """ρ = N̂ / N."""
    rho_interval: tuple[float, float]
    n_hat_loss: float
    """N̂ from the measured conditional loss directly (no sigmoid)."""
    rho_loss: float
    rho_loss_interval: tuple[float, float]
    bootstrap: dict[str, int] = field(default_factory=dict)
    """Replicates drawn and failed (no fit or no inversion) per estimate."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _interval(values: list[float], n_boot: int, what: str, level: float) -> tuple[float, float]:
    if len(values) < n_boot // 2:
        raise DensityError(
            f"{what}: only {len(values)} of {n_boot} bootstrap replicates could be fitted and inverted: "
            "the reference points do not pin the curves down"
        )
    lo, hi = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def estimate_density(
    ref: Reference, n_params: float, loss: float, score: float, *, n_boot: int = 200, seed: int = 0,
    level: float = 0.95, via: str = "score",
) -> Density:  # fmt: skip
    """ρ and ρ_L of a model with `n_params` non-embedding parameters, conditional loss and score.

    `via="loss"` skips the sigmoid (ρ := ρ_L, L̂ := L): for models whose score the sigmoid cannot invert,
    e.g. near chance. The default follows the paper and raises when S is outside the sigmoid's range."""
    if via not in ("score", "loss"):
        raise DensityError(f"via must be 'score' or 'loss', got {via!r}")
    if not (math.isfinite(n_params) and n_params > 0):
        raise DensityError(f"parameter count must be a positive number, got {n_params}")
    if not math.isfinite(loss):
        raise DensityError(f"conditional loss is {loss}: the model's scores are unusable")
    loss_hat = ref.sigmoid.invert(score) if via == "score" else loss
    n_hat = ref.law.effective_params(loss_hat, ref.d0)
    n_hat_loss = ref.law.effective_params(loss, ref.d0)
    rng = np.random.default_rng(seed)
    rhos, rhos_loss = [], []
    for _ in range(n_boot):
        rows = [ref.rows[i] for i in rng.integers(0, len(ref.rows), len(ref.rows))]
        sig_rows = [
            ref.sigmoid_rows[i] for i in rng.integers(0, len(ref.sigmoid_rows), len(ref.sigmoid_rows))
        ]
        try:
            law = _law(rows, start=ref.law)
        except DensityError:
            continue
        try:
            rhos_loss.append(law.effective_params(loss, ref.d0) / n_params)
            l_hat = _sigmoid(sig_rows, start=ref.sigmoid).invert(score) if via == "score" else loss
            rhos.append(law.effective_params(l_hat, ref.d0) / n_params)
        except DensityError:
            continue
    return Density(
        float(n_params), float(loss), float(score), loss_hat, n_hat, n_hat / n_params,
        _interval(rhos, n_boot, "ρ", level), n_hat_loss, n_hat_loss / n_params,
        _interval(rhos_loss, n_boot, "ρ_L", level),
        {"replicates": n_boot, "failed_rho": n_boot - len(rhos), "failed_rho_loss": n_boot - len(rhos_loss)},
    )  # fmt: skip
