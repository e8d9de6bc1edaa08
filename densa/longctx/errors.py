"""Errors for KV policies and the chunked-prefill driver."""

from densa.errors import DensaError


class KVPolicyError(DensaError):
    """A KV policy or its budget/chunk settings cannot be used as given."""
