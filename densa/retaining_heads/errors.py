"""Errors raised for unusable retaining heads (missing, or trained for another model)."""

from densa.errors import DensaError


class RetainingHeadsError(DensaError):
    """Retaining heads are missing, malformed, or belong to a different model."""
