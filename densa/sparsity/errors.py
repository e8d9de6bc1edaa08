"""Bad-input errors of `densa.sparsity`; all are `DensaError`s, so the CLI prints them without a traceback."""

from densa.errors import DensaError


class SparsityError(DensaError):
    """A sparsity measurement cannot run with the given model, data or settings."""


class UnsupportedModelError(SparsityError):
    """The model has no FFN hook points (or a layout the metrics cannot read, e.g. tensor-parallel shards)."""


class CalibrationDataError(SparsityError):
    """The calibration/evaluation tokens are too few or malformed."""
