"""Process-level failures, in real subprocesses: SIGTERM saves and exits 0; SIGKILL during a save leaves
the previous checkpoint intact and the run resumes from it as if nothing happened."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from trainer_helpers import REPO, SEQ, VOCAB, replace, tiny_cfg

from densa.train.checkpoint import MARKER, complete_checkpoints
from densa.train.run import train
from densa.train.synthetic import SyntheticDataset

SCRIPT = REPO / "tests" / "train" / "rank_scenarios.py"


def _start(scenario: str, out, arg: str = "") -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO / "tests" / "train"))
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), scenario, str(out), arg],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_sigterm_saves_a_checkpoint_and_exits_0(tmp_path):
    proc = _start("sigterm", tmp_path)
    metrics = tmp_path / "metrics.jsonl"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 2:
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    assert "received SIGTERM; saving a checkpoint" in err
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["interrupted"] and 2 <= result["step"] < 500
    assert [s for s, _ in complete_checkpoints(tmp_path)] == [result["step"]]


def test_sigkill_during_save_keeps_previous_checkpoint(tmp_path, ds_world):
    run = tmp_path / "run"
    killed = _start("kill_in_save", run, "kill")
    _, err = killed.communicate(timeout=240)
    assert killed.returncode == -signal.SIGKILL, err[-3000:]
    ckpts = run / "checkpoints"
    assert [s for s, _ in complete_checkpoints(run)] == [2]
    assert (ckpts / "step_4.tmp").is_dir() and not (ckpts / "step_4.tmp" / MARKER).exists()

    resumed = _start("kill_in_save", run)
    _, err = resumed.communicate(timeout=240)
    assert resumed.returncode == 0, err[-3000:]
    result = json.loads((run / "result.json").read_text())
    assert result["first_step"] == 2  # resumed from step_2
    assert not (ckpts / "step_4.tmp").exists()  # leftover cleaned
    assert [s for s, _ in complete_checkpoints(run)] == [2, 4, 6]

    cfg = replace(tiny_cfg(tmp_path / "reference", steps=6), "checkpoint", interval=2, keep_last=3)
    reference = train(cfg, train_data=SyntheticDataset(VOCAB, SEQ))
    expected = [h["loss"] for h in reference.history][2:]
    assert result["losses"] == pytest.approx(expected, rel=1e-6)
