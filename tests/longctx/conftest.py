"""Shared fixtures of the long-context tests."""

from __future__ import annotations

import pytest
import torch

from densa.models import Transformer
from densa.testing.models import tiny_model_config


@pytest.fixture(scope="module")
def model() -> Transformer:
    """A tiny random densa model (seed 0); test_policies.py overrides it with retaining heads attached."""
    torch.manual_seed(0)
    return Transformer(tiny_model_config()).eval()
