"""The Densing Law itself: `ln ρ_max = A·t + B` over dated models, and its doubling time ln 2 / A.

t counts days since Llama-1's release (2023-02-24), as in the paper; ρ_max(t) is the running maximum of
density over release date (the envelope), and the line is fitted on the models that set it (the frontier):
a model below the envelope does not pull the slope down. With the published A = 0.007 the doubling time
is 99 days.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from datetime import date

import numpy as np

from densa.density.fit import DensityError

ORIGIN = date(2023, 2, 24)
"""t = 0: Llama-1's release."""


def doubling_days(a: float) -> float:
    """T₂ = ln 2 / A (days) for a growth rate A per day."""
    if not (math.isfinite(a) and a > 0):
        raise DensityError(f"growth rate A = {a} per day: density does not grow, no doubling time")
    return math.log(2.0) / a


@dataclass(frozen=True)
class DensityLaw:
    a: float
    b: float
    r2: float
    doubling_days: float
    names: tuple[str, ...]
    frontier: tuple[bool, ...]
    """Models that set a new maximum density (the fitted points)."""
    days: tuple[float, ...]
    rho: tuple[float, ...]
    rho_max: tuple[float, ...]


@dataclass(frozen=True)
class DatedModel:
    name: str
    released: date
    density: float


def read_models_csv(path: str | os.PathLike) -> list[DatedModel]:
    """Rows with columns name, date (YYYY-MM-DD) and density; errors name the line."""
    out = []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = {"name", "date", "density"} - set(reader.fieldnames or ())
        if missing:
            raise DensityError(f"{path}: missing column(s) {sorted(missing)} (need name, date, density)")
        for n, row in enumerate(reader, 2):
            try:
                out.append(DatedModel(row["name"], date.fromisoformat(row["date"]), float(row["density"])))
            except ValueError as err:
                raise DensityError(f"{path}:{n}: {err}") from None
    return out


def fit_density_law(models: list[DatedModel], origin: date = ORIGIN) -> DensityLaw:
    """OLS of ln ρ_max(t) on t over the frontier models sorted by date (≥ 3 models, ≥ 2 dates, ρ > 0)."""
    if len(models) < 3:
        raise DensityError(f"the density law needs ≥ 3 dated models, got {len(models)}")
    bad = [m.name for m in models if not (math.isfinite(m.density) and m.density > 0)]
    if bad:
        raise DensityError(f"densities must be finite and > 0: {bad}")
    models = sorted(models, key=lambda m: m.released)
    t = np.array([(m.released - origin).days for m in models], dtype=np.float64)
    if np.ptp(t) == 0:
        raise DensityError("all models share one release date: no time trend to fit")
    rho = np.array([m.density for m in models])
    envelope = np.maximum.accumulate(rho)
    front = rho >= envelope
    if np.ptp(t[front]) == 0:
        raise DensityError("the density frontier has one release date only: no time trend to fit")
    y = np.log(envelope[front])
    a, b = np.polyfit(t[front], y, 1)
    res = y - (a * t[front] + b)
    total = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float((res**2).sum()) / total if total > 0 else 1.0
    return DensityLaw(
        float(a), float(b), r2, doubling_days(float(a)) if a > 0 else math.inf,
        tuple(m.name for m in models), tuple(front.tolist()), tuple(t.tolist()), tuple(rho.tolist()),
        tuple(envelope.tolist()),
    )  # fmt: skip
