"""The error a knowledge plugin raises for input it cannot use (another model's mapper, another KB)."""

from densa.errors import DensaError


class PluginError(DensaError):
    """A plugin file, KB or embedding table that does not fit what it is used with."""
