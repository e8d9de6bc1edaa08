"""Errors of the analysis package: bad probes, models or run directories, explained by the message."""

from densa.errors import DensaError


class AnalysisError(DensaError):
    """Probes, a model or a run directory cannot be analysed as given."""
