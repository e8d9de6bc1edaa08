"""Exceptions shared by every densa package.

`DensaError` marks bad input whose message tells the whole story (a file, line or key and what is
wrong with it); the CLI prints it without a traceback and exits with status 1.
"""


class DensaError(Exception):
    """Bad input or an unusable environment, explained by the message."""


class DataError(DensaError):
    """A dataset, tokenizer or manifest cannot be used as given."""


class CheckpointError(DensaError):
    """A checkpoint or HF folder is missing files or does not match the model."""


class CorruptFileError(CheckpointError):
    """A checkpoint or weights file cannot be read: truncated, garbage, or not the format its name says."""
