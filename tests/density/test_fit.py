"""The two-step estimation against synthetic data generated from known parameters, and its bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest

from densa.density.estimate import Reference, estimate_density, fit_reference
from densa.density.fit import DensityError, fit_loss_law, fit_sigmoid

A, ALPHA, B, BETA = 40.0, 0.3, 300.0, 0.35
C, GAMMA, LMID, DOFF = 0.7, -3.0, 3.0, 0.25
N = np.array([2e4, 7e4, 1.6e5, 5e5]).repeat(3)
D = N * np.tile([5.0, 10.0, 20.0], 4)


def law(n, d):
    return A * np.power(n, -ALPHA) + B * np.power(d, -BETA)


def sig(loss):
    return C / (1 + np.exp(-GAMMA * (np.asarray(loss) - LMID))) + DOFF


def test_loss_law_recovers_known_parameters() -> None:
    fit = fit_loss_law(N, D, law(N, D))
    assert (fit.a, fit.alpha, fit.b, fit.beta) == pytest.approx((A, ALPHA, B, BETA), rel=1e-6)
    assert fit.r2 == pytest.approx(1.0, abs=1e-12)
    assert max(map(abs, fit.residuals)) < 1e-9


def test_loss_law_fits_noisy_points_with_r2_and_residuals() -> None:
    noise = np.random.default_rng(0).normal(0, 0.01, len(N))
    y = law(N, D) + noise
    fit = fit_loss_law(N, D, y)
    assert fit.r2 > 0.99
    assert np.allclose(fit.residuals, fit.predict(N, D) - y)


def test_inverting_a_point_on_the_curve_gives_back_its_n() -> None:
    fit = fit_loss_law(N, D, law(N, D))
    d0 = 1e7
    for n in (3e4, 2e5, 1e6):
        assert fit.effective_params(float(fit.predict(n, d0)), d0) == pytest.approx(n, rel=1e-9)


def test_sigmoid_recovers_parameters_and_inverts() -> None:
    x = np.linspace(1.5, 5.0, 9)
    fit = fit_sigmoid(x, sig(x))
    assert (fit.c, fit.gamma, fit.l, fit.d) == pytest.approx((C, GAMMA, LMID, DOFF), rel=1e-6)
    for loss in (2.0, 3.3, 4.5):
        assert fit.invert(float(fit.predict(loss))) == pytest.approx(loss, rel=1e-9)


def test_bounded_sigmoid_recovers_a_curve_inside_its_bounds() -> None:
    x = np.linspace(1.5, 5.0, 9)
    fit = fit_sigmoid(x, sig(x), bounds=(0.0, 1.0))  # the true range (0.25, 0.95) lies inside
    assert (fit.c, fit.gamma, fit.l, fit.d) == pytest.approx((C, GAMMA, LMID, DOFF), rel=1e-5)
    assert fit.bounds == (0.0, 1.0)


def test_bounded_sigmoid_keeps_an_accuracy_ceiling_the_free_fit_overshoots() -> None:
    """Scores that only start to rise (as densa's small series): the free fit puts the ceiling far above
    any accuracy; the bounded one keeps both asymptotes in [0, 1], and a refit from it keeps its bounds."""
    x = np.array([3.4, 2.9, 2.5, 2.1, 1.9, 1.6, 1.45, 1.3])
    y = np.array([0.14, 0.14, 0.15, 0.16, 0.26, 0.27, 0.27, 0.49])
    free, bounded = fit_sigmoid(x, y), fit_sigmoid(x, y, bounds=(0.0, 1.0))
    assert free.range[1] > 100
    lo, hi = bounded.range
    assert lo >= 0.0 and hi <= 1.0 + 1e-12 and bounded.gamma < 0
    assert (bounded.c, bounded.d, bounded.l) == pytest.approx((0.84167, 0.15833, 1.17480), abs=1e-4)
    assert bounded.predict(1.3) == pytest.approx(0.49 + bounded.residuals[-1], abs=1e-12)
    refit = fit_sigmoid(x, y, start=bounded)
    assert refit.bounds == (0.0, 1.0) and refit.c + refit.d <= 1.0 + 1e-12
    with pytest.raises(DensityError, match=r"sigmoid bounds \(0.0, 0.4\) must be increasing and hold every"):
        fit_sigmoid(x, y, bounds=(0.0, 0.4))


def reference() -> Reference:
    rows = [{"name": f"r{i}", "N": n, "D": d, "loss": float(law(n, d))} for i, (n, d) in enumerate(zip(N, D))]
    for r in rows:
        r["score"] = float(sig(r["loss"]))
    perf = [
        {"name": f"p{i}", "N": 1e6, "D": k * 1e6, "loss": float(law(1e6, k * 1e6))}
        for i, k in enumerate((5, 40, 200))
    ]
    for r in perf:
        r["score"] = float(sig(r["loss"]))
    data = fit_reference(rows, perf, d0=1e7)
    for h in data["heldout"]:  # held-out points are predicted by the sigmoid fitted without them
        assert h["predicted"] == pytest.approx(h["score"], abs=1e-6)
    return Reference.from_dict(data)


def test_a_reference_model_has_density_one_and_a_shifted_one_does_not() -> None:
    ref = reference()
    loss = float(law(1e5, ref.d0))
    got = estimate_density(ref, 1e5, loss, float(sig(loss)), n_boot=40)
    assert (got.rho, got.rho_loss) == pytest.approx((1.0, 1.0), rel=1e-6)
    assert got.rho_interval[0] <= 1.0 + 1e-6 and got.rho_interval[1] >= 1.0 - 1e-6
    # a model scoring like a reference model of 4e5 parameters with 1e5 of its own: ρ = 4
    loss4 = float(law(4e5, ref.d0))
    assert estimate_density(ref, 1e5, loss4, float(sig(loss4)), n_boot=20).rho == pytest.approx(4.0, rel=1e-6)


def test_too_few_points_is_a_clear_error() -> None:
    with pytest.raises(DensityError, match=r"needs ≥ 5 reference points .* got 4 points"):
        fit_loss_law(N[:4], D[:4], law(N[:4], D[:4]))
    with pytest.raises(DensityError, match=r"≥ 2 distinct N and ≥ 2 distinct D, got 6 points, 1 distinct N"):
        fit_loss_law([1e5] * 6, np.arange(1, 7) * 1e6, law(1e5, np.arange(1, 7) * 1e6))
    with pytest.raises(DensityError, match=r"needs ≥ 5 \(loss, score\) points, got 3"):
        fit_sigmoid([1, 2, 3], [0.9, 0.5, 0.3])
    with pytest.raises(DensityError, match="non-finite"):
        fit_loss_law(N, D, [math.nan, *law(N, D)[1:]])


def test_scores_outside_the_sigmoid_and_losses_below_the_floor_are_refused() -> None:
    ref = reference()
    with pytest.raises(
        DensityError,
        match=r"score S = 0\.9600 is outside the fitted sigmoid's open range \(0\.2500, 0\.9500\): "
        "it cannot be inverted",
    ):
        estimate_density(ref, 1e5, 3.0, 0.96)
    with pytest.raises(DensityError, match="outside the fitted sigmoid's open range"):
        estimate_density(ref, 1e5, 3.0, 0.25)
    loss = float(law(4e5, ref.d0))  # via="loss" inverts L directly and ignores the score
    assert estimate_density(ref, 1e5, loss, 0.96, n_boot=20, via="loss").rho == pytest.approx(4.0, rel=1e-6)
    floor = B * ref.d0**-BETA
    with pytest.raises(
        DensityError, match=r"at or below the loss law's floor b·D0\^−β = .*no reference size reaches it"
    ):
        ref.law.effective_params(floor * 0.99, ref.d0)
    with pytest.raises(DensityError, match="conditional loss is nan"):
        estimate_density(ref, 1e5, math.nan, 0.5)
