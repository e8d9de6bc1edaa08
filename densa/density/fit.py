"""The Densing Law's two fitted curves, with numpy only (no scipy needed).

- loss law `L(N, D) = a·N^−α + b·D^−β`: a grid over (α, β) with a and b solved by linear least squares
  (variable projection), refined by Levenberg–Marquardt over all four parameters;
- sigmoid `S(L) = c / (1 + e^(−γ(L − l))) + d`: Levenberg–Marquardt from several starts.

Both report R² and residuals, and raise `DensityError` (never return NaN) when there are too few points,
the inputs are not finite, or a curve cannot be inverted at the requested value.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from densa.errors import DensaError


class DensityError(DensaError):
    """A density cannot be estimated from the given points or score; the message names the cause."""


def _array(name: str, values: Sequence[float], positive: bool = False) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(x)):
        raise DensityError(f"{name}: non-finite values {x[~np.isfinite(x)].tolist()}")
    if positive and np.any(x <= 0):
        raise DensityError(f"{name}: values must be > 0, got {x[x <= 0].tolist()}")
    return x


def levenberg_marquardt(
    residual: Callable[[np.ndarray], np.ndarray], p0: Sequence[float], iters: int = 300, tol: float = 1e-15
) -> np.ndarray:
    """Least squares min Σ residual(p)² by damped Gauss–Newton with a forward-difference Jacobian."""
    p = np.asarray(p0, dtype=np.float64)
    r = residual(p)
    cost, lam = float(r @ r), 1e-3
    for _ in range(iters):
        h = 1e-7 * np.maximum(1.0, np.abs(p))
        jac = np.stack([(residual(p + h[i] * np.eye(len(p))[i]) - r) / h[i] for i in range(len(p))], axis=1)
        g, a = jac.T @ r, jac.T @ jac
        improved = False
        while lam < 1e12:
            try:
                step = np.linalg.solve(a + lam * np.diag(np.diag(a) + 1e-12), -g)
            except np.linalg.LinAlgError:
                lam *= 10
                continue
            trial = p + step
            rt = residual(trial)
            ct = float(rt @ rt) if np.all(np.isfinite(rt)) else math.inf
            if ct < cost:
                done = cost - ct <= tol * max(cost, 1e-300) or np.max(np.abs(step)) < 1e-13
                p, r, cost, lam, improved = trial, rt, ct, max(lam / 10, 1e-12), True
                break
            lam *= 10
        if not improved or done:
            break
    return p


def _r2(y: np.ndarray, residuals: np.ndarray) -> float:
    total = float(((y - y.mean()) ** 2).sum())
    return 1.0 - float((residuals**2).sum()) / total if total > 0 else 1.0


@dataclass(frozen=True)
class LossLaw:
    """`L(N, D) = a·N^−α + b·D^−β` fitted over (N, D, L) points."""

    a: float
    alpha: float
    b: float
    beta: float
    r2: float
    residuals: tuple[float, ...]

    def predict(self, n: float | np.ndarray, d: float | np.ndarray) -> float | np.ndarray:
        return self.a * np.power(n, -self.alpha) + self.b * np.power(d, -self.beta)

    def effective_params(self, loss: float, d0: float) -> float:
        """N̂ = ((L − b·D0^−β) / a)^(−1/α): the N whose loss at D0 tokens is `loss`."""
        floor = self.b * d0**-self.beta
        if not math.isfinite(loss) or loss <= floor:
            raise DensityError(
                f"loss {loss:.4f} is at or below the loss law's floor b·D0^−β = {floor:.4f} at D0 = {d0:.4g} "
                "tokens: no reference size reaches it (effective size infinite)"
            )
        try:
            n_hat = ((loss - floor) / self.a) ** (-1.0 / self.alpha)
        except (ZeroDivisionError, OverflowError):
            n_hat = math.inf
        if not math.isfinite(n_hat) or n_hat <= 0:
            raise DensityError(
                f"the loss law (a = {self.a:.3g}, α = {self.alpha:.3g}) gives no finite N̂ for {loss:.4f}"
            )
        return n_hat


def fit_loss_law(
    n: Sequence[float], d: Sequence[float], loss: Sequence[float], start: LossLaw | None = None
) -> LossLaw:
    """Fit `a·N^−α + b·D^−β` (a, b > 0; 0 < α, β ≤ 5) to reference points; needs ≥ 5 points with at least
    two distinct N and two distinct D. `start` skips the grid and refines from a previous fit (bootstrap)."""
    n, d, y = _array("N", n, True), _array("D", d, True), _array("loss", loss, True)
    if not len(n) == len(d) == len(y):
        raise DensityError(f"N, D and loss differ in length: {len(n)}, {len(d)}, {len(y)}")
    if len(y) < 5 or len(set(n.tolist())) < 2 or len(set(d.tolist())) < 2:
        raise DensityError(
            "the loss law has 4 parameters: it needs ≥ 5 reference points with ≥ 2 distinct N and "
            f"≥ 2 distinct D, "
            f"got {len(y)} points, {len(set(n.tolist()))} distinct N, {len(set(d.tolist()))} distinct D"
        )
    ln_n, ln_d = np.log(n), np.log(d)

    def residual(p: np.ndarray) -> np.ndarray:
        return np.exp(p[0] - p[1] * ln_n) + np.exp(p[2] - p[3] * ln_d) - y

    if start is not None:
        p0 = [math.log(start.a), start.alpha, math.log(start.b), start.beta]
    else:
        p0 = _grid_start(ln_n, ln_d, y)
    p = levenberg_marquardt(residual, p0)
    res = residual(p)
    if not np.all(np.isfinite(p)) or not np.all(np.isfinite(res)) or min(p[1], p[3]) <= 1e-6:
        raise DensityError("the loss-law fit diverged (exponents must stay > 0)")
    if not (0 < math.exp(p[0]) < math.inf and 0 < math.exp(p[2]) < math.inf):
        raise DensityError("the loss-law fit diverged (a and b must stay finite and > 0)")
    return LossLaw(math.exp(p[0]), float(p[1]), math.exp(p[2]), float(p[3]), _r2(y, res), tuple(res.tolist()))


def _grid_start(ln_n: np.ndarray, ln_d: np.ndarray, y: np.ndarray) -> list[float]:
    """(ln a, α, ln b, β) of the best grid point, a and b solved linearly for each (α, β)."""
    grid = np.exp(np.linspace(math.log(0.01), math.log(5.0), 80))
    al, be = np.meshgrid(grid, grid, indexing="ij")
    x1 = np.exp(-al[..., None] * ln_n)  # [A, B, points]
    x2 = np.exp(-be[..., None] * ln_d)
    s11, s12, s22 = (x1 * x1).sum(-1), (x1 * x2).sum(-1), (x2 * x2).sum(-1)
    t1, t2 = (x1 * y).sum(-1), (x2 * y).sum(-1)
    det = s11 * s22 - s12**2
    with np.errstate(divide="ignore", invalid="ignore"):
        a, b = (s22 * t1 - s12 * t2) / det, (s11 * t2 - s12 * t1) / det
        sse = ((a[..., None] * x1 + b[..., None] * x2 - y) ** 2).sum(-1)
    sse = np.where((a > 0) & (b > 0) & np.isfinite(sse), sse, np.inf)
    if not np.isfinite(sse).any():
        raise DensityError("no loss law with a, b > 0 fits these points (does the loss fall with N and D?)")
    i, j = np.unravel_index(np.argmin(sse), sse.shape)
    return [math.log(a[i, j]), float(grid[i]), math.log(b[i, j]), float(grid[j])]


@dataclass(frozen=True)
class Sigmoid:
    """`S(L) = c / (1 + e^(−γ(L − l))) + d` (γ < 0 when the score falls as the loss rises)."""

    c: float
    gamma: float
    l: float  # noqa: E741 (the paper's name)
    d: float
    r2: float
    residuals: tuple[float, ...]
    bounds: tuple[float, float] | None = None
    """(lo, hi) the fit kept both asymptotes in (lo ≤ d, d + c ≤ hi), or None for an unconstrained fit."""

    def predict(self, loss: float | np.ndarray) -> float | np.ndarray:
        return self.c / (1.0 + np.exp(-self.gamma * (np.asarray(loss) - self.l))) + self.d

    @property
    def range(self) -> tuple[float, float]:
        return (min(self.d, self.d + self.c), max(self.d, self.d + self.c))

    def invert(self, score: float) -> float:
        """L̂(S) = l − (1/γ)·ln(c/(S − d) − 1), defined only strictly inside the sigmoid's range."""
        lo, hi = self.range
        if not (math.isfinite(score) and lo < score < hi):
            raise DensityError(
                f"score S = {score:.4f} is outside the fitted sigmoid's open range ({lo:.4f}, {hi:.4f}): "
                "it cannot be inverted to a loss"
            )
        return self.l - math.log(self.c / (score - self.d) - 1.0) / self.gamma


def _logit(p: float, eps: float = 1e-6) -> float:
    p = min(max(p, eps), 1.0 - eps)
    return math.log(p / (1.0 - p))


def _expit(q: np.ndarray | float) -> np.ndarray | float:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(q)))


def fit_sigmoid(
    loss: Sequence[float],
    score: Sequence[float],
    start: Sigmoid | None = None,
    bounds: tuple[float, float] | None = None,
) -> Sigmoid:
    """Fit the sigmoid S(L) by least squares from several starts (or from `start` only); needs ≥ 5 points
    and some spread. `bounds=(lo, hi)` keeps both asymptotes inside [lo, hi] (an accuracy lies in [0, 1]):
    the fit then runs over d = lo + (hi − lo)·σ(q_d) and c = (hi − d)·σ(q_c), so c ≥ 0 (no loss of
    generality: a negative c is the same curve with γ, c and d reflected). A refit from `start` keeps the
    start's bounds."""
    x, y = _array("loss", loss), _array("score", score)
    if len(x) != len(y):
        raise DensityError(f"loss and score differ in length: {len(x)}, {len(y)}")
    if len(x) < 5:
        raise DensityError(f"the sigmoid has 4 parameters: it needs ≥ 5 (loss, score) points, got {len(x)}")
    if np.ptp(x) <= 0 or np.ptp(y) <= 0:
        raise DensityError("the sigmoid needs points with different losses and different scores")
    bounds = start.bounds if start is not None else bounds
    if bounds is not None:
        lo, hi = float(bounds[0]), float(bounds[1])
        if not (lo < hi and y.min() >= lo and y.max() <= hi):
            raise DensityError(f"sigmoid bounds ({lo}, {hi}) must be increasing and hold every score")

    def params(p: np.ndarray) -> tuple[float, float, float, float]:
        """(c, γ, l, d) from the fitted vector (the bounded fit's c and d are squashed into the bounds)."""
        if bounds is None:
            return p[0], p[1], p[2], p[3]
        d = lo + (hi - lo) * _expit(p[3])
        return (hi - d) * _expit(p[0]), p[1], p[2], d

    def unparams(c: float, gamma: float, l: float, d: float) -> list[float]:  # noqa: E741
        if bounds is None:
            return [c, gamma, l, d]
        d = min(max(d, lo), hi)
        return [_logit(c / (hi - d) if hi > d else 0.5), gamma, l, _logit((d - lo) / (hi - lo))]

    def residual(p: np.ndarray) -> np.ndarray:
        c, gamma, l, d = params(p)  # noqa: E741
        with np.errstate(over="ignore"):
            return c / (1.0 + np.exp(-gamma * (x - l))) + d - y

    best, best_cost = None, math.inf
    span = float(np.ptp(x))
    starts = [
        unparams(float(np.ptp(y)) * 1.2, gamma / span, float(centre), float(y.min()) - 0.1 * float(np.ptp(y)))
        for gamma in (-2.0, -8.0, -32.0)
        for centre in np.quantile(x, [0.25, 0.5, 0.75])
    ]
    if start is not None:
        starts = [unparams(start.c, start.gamma, start.l, start.d)]
    for p0 in starts:
        p = levenberg_marquardt(residual, p0)
        r = residual(p)
        cost = float(r @ r) if np.all(np.isfinite(r)) else math.inf
        if cost < best_cost:
            best, best_cost = p, cost
    if best is None:
        raise DensityError("the sigmoid fit diverged from every start")
    res = residual(best)
    kept = None if bounds is None else (lo, hi)
    return Sigmoid(*(float(v) for v in params(best)), _r2(y, res), tuple(res.tolist()), kept)
