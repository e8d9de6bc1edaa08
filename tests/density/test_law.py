"""ln ρ_max = A·t + B over dated models, and the published doubling-time arithmetic."""

from __future__ import annotations

import math
from datetime import date, timedelta
from pathlib import Path

import pytest

from densa.density.fit import DensityError
from densa.density.law import ORIGIN, DatedModel, doubling_days, fit_density_law, read_models_csv


def test_published_arithmetic() -> None:
    assert doubling_days(0.007) == pytest.approx(99.02, abs=0.01)  # paper: A ≈ 0.007 → ~3.3 months
    assert doubling_days(0.0073) == pytest.approx(94.95, abs=0.01)  # §3.3 text: 95 days
    assert doubling_days(0.0048) == pytest.approx(144.41, abs=0.01)  # pre-ChatGPT MMLU rate
    with pytest.raises(DensityError, match="does not grow"):
        doubling_days(-0.001)


def test_fit_recovers_a_and_uses_the_envelope() -> None:
    models = [
        DatedModel(f"m{t}", ORIGIN + timedelta(days=t), math.exp(0.007 * t - 2.0))
        for t in (0, 90, 200, 400, 600)
    ]
    models.append(DatedModel("laggard", ORIGIN + timedelta(days=500), 0.01))  # below the envelope: ignored
    law = fit_density_law(models)
    assert (law.a, law.b, law.r2) == pytest.approx((0.007, -2.0, 1.0), rel=1e-9)
    assert law.doubling_days == pytest.approx(99.02, abs=0.01)
    i = law.names.index("laggard")
    assert law.rho_max[i] == pytest.approx(math.exp(0.007 * 400 - 2.0)) and not law.frontier[i]


def test_models_csv_and_bad_input(tmp_path: Path) -> None:
    path = tmp_path / "models.csv"
    path.write_text("name,date,density\na,2023-02-24,0.1\nb,2023-08-24,0.5\nc,2024-02-24,1.2\n")
    models = read_models_csv(path)
    assert [m.released for m in models][1] == date(2023, 8, 24)
    assert fit_density_law(models).a > 0
    path.write_text("name,date\na,2023-02-24\n")
    with pytest.raises(DensityError, match=r"missing column\(s\) \['density'\]"):
        read_models_csv(path)
    path.write_text("name,date,density\na,2023-13-01,1\n")
    with pytest.raises(DensityError, match=r"models.csv:2: month must be in 1..12"):
        read_models_csv(path)
    with pytest.raises(DensityError, match="needs ≥ 3 dated models, got 2"):
        fit_density_law(models[:2])
    with pytest.raises(DensityError, match=r"finite and > 0: \['z'\]"):
        fit_density_law([*models, DatedModel("z", ORIGIN, 0.0)])
