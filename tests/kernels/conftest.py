"""Make kernel_cases importable by the tests here and by the interpreter subprocess (no TRITON_INTERPRET here:
it is set only in that subprocess, see test_triton_interpret.py)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
