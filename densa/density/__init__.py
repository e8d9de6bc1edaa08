"""Capability density (Densing Law): tasks and conditional loss, the two-step estimation, the law's fit.

    from densa.density import load_suite, score_suite, fit_reference, Reference, estimate_density

See docs/density.md.
"""

from densa.density.estimate import Density, Reference, estimate_density, fit_reference
from densa.density.fit import DensityError, LossLaw, Sigmoid, fit_loss_law, fit_sigmoid
from densa.density.law import DensityLaw, doubling_days, fit_density_law, read_models_csv
from densa.density.scoring import SuiteScore, loglikelihoods, score_suite
from densa.density.tasks import Task, load_suite, load_task, write_task_files

__all__ = [
    "Density", "DensityError", "DensityLaw", "LossLaw", "Reference", "Sigmoid", "SuiteScore", "Task",
    "doubling_days", "estimate_density", "fit_density_law", "fit_loss_law", "fit_reference", "fit_sigmoid",
    "load_suite", "load_task", "loglikelihoods", "read_models_csv", "score_suite", "write_task_files",
]  # fmt: skip
