"""Trainer tests import trainer_helpers by name; `ds_world` (one in-process DeepSpeed world per module)
lives in tests/conftest.py."""

from __future__ import annotations

import sys
from pathlib import Path

# Test modules and the rank scripts import trainer_helpers by name (pytest runs with --import-mode=importlib).
sys.path.insert(0, str(Path(__file__).parent))
