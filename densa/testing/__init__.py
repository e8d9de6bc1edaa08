"""Helpers shared by densa's test suites (multi-process runs, tiny models); no pytest dependency."""

from densa.testing.distributed import DistributedTestError, find_free_port, run_distributed
from densa.testing.models import random_tokens, tiny_model_config

__all__ = ["DistributedTestError", "find_free_port", "random_tokens", "run_distributed", "tiny_model_config"]
