"""benchmarks/gpu/run_all.sh checks itself without a GPU (issue 19, item 6): `--dry-run` runs each step's CPU
form, checks that the GPU form's script accepts every flag it is given, and writes its summary only to
--out; a bad argument fails with a message naming it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "gpu" / "run_all.sh"
STEPS = ["gpu_tests", "train_mfu", "moe_decode", "sparse_ffn", "infllm", "apb"]


def _run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1")
    return subprocess.run(
        ["bash", str(SCRIPT), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


def _summary(out: Path) -> dict:
    return json.loads((out / "gpu_run_all.json").read_text())


def test_dry_run_of_one_step_writes_its_summary_to_out_only(tmp_path):
    summary_files = [REPO / "benchmarks" / "results" / f"gpu_run_all.{ext}" for ext in ("json", "md")]
    before = [f.stat().st_mtime_ns if f.exists() else None for f in summary_files]
    result = _run("--dry-run", "--only", "apb", "--out", str(tmp_path))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "run_all.sh: apb on a GPU: " in result.stdout
    summary = _summary(tmp_path)
    assert summary["dry_run"] is True
    assert [(s["step"], s["status"], s["exit_code"]) for s in summary["steps"]] == [("apb", "ok", 0)]
    assert summary["steps"][0]["command"].endswith("benchmarks/gpu/apb.py --dry-run")
    assert (tmp_path / "logs" / "apb.log").read_text().strip().endswith("methods ['apb', 'ring', 'star']")
    after = [f.stat().st_mtime_ns if f.exists() else None for f in summary_files]
    assert after == before  # a dry run writes its summary only to --out


def test_bad_arguments_are_named():
    result = _run("--only", "nope")
    assert result.returncode == 2
    assert f"--only: unknown step nope (steps: {' '.join(STEPS)})" in result.stderr
    result = _run("--fast")
    assert result.returncode == 2
    assert "unknown argument --fast" in result.stderr


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the message shown without a GPU")
def test_without_gpu_the_real_run_refuses_to_start():
    result = _run("--only", "apb")
    assert result.returncode == 2
    assert "no CUDA device visible to" in result.stderr and "use --dry-run" in result.stderr


@pytest.mark.slow
def test_full_dry_run_passes_every_step(tmp_path):
    result = _run("--dry-run", "--out", str(tmp_path), timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    steps = _summary(tmp_path)["steps"]
    assert [(s["step"], s["status"]) for s in steps] == [(name, "ok") for name in STEPS]
    collected = (tmp_path / "logs" / "gpu_tests.log").read_text()
    assert "tests/train/test_bf16_gpu.py::test_bf16_trains_on_the_gpu_close_to_fp32" in collected
    assert "tests/kernels/test_gpu_kernels.py::test_triton_on_cuda_matches_reference" in collected
