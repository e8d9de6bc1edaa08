"""Triton kernels vs the dense masked reference on CPU, in a TRITON_INTERPRET=1 subprocess (fp32, <= 1e-5)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from kernel_cases import interpret_cases

HERE = Path(__file__).parent
CASES = interpret_cases()

pytest.importorskip("triton")


@pytest.fixture(scope="module")
def interpret_results() -> dict[str, dict]:
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, str(HERE / "kernel_interpret_runner.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout)


def test_kernels_ran_interpreted(interpret_results: dict[str, dict]) -> None:
    assert interpret_results["_interpreted"]["ok"]
    assert interpret_results["_3d_input"]["ok"]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_triton_matches_reference(interpret_results: dict[str, dict], case) -> None:
    result = interpret_results[case.id]
    assert "error" not in result, result.get("error")
    assert result["shape_ok"]
    assert result["err"] <= 1e-5 * max(1.0, result["scale"]), result
