"""`densa check` and `densa launch` through the CLI dispatcher: output, exit codes, dry-run text."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from densa.launch import supervise
from densa.launch.cli import main

TINY = str(Path(__file__).resolve().parents[2] / "recipes" / "tiny_pretrain.yaml")


def test_check_prints_recipe_batch_and_deepspeed(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", TINY, "--world-size", "2", "--set", "optim.lr=1e-3"]) == 0
    out = capsys.readouterr().out
    recipe_text = out.split("# --- resolved recipe\n")[1].split("# --- batch")[0]
    assert yaml.safe_load(recipe_text)["optim"]["lr"] == 1e-3
    assert "# 1024 tokens/step = 16 sequences of 64 = dp 2 × grad_accum 2 × micro_batch 4" in out
    assert '"train_batch_size": 16,' in out and '"gradient_accumulation_steps": 2,' in out


def test_check_reports_all_errors_and_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["check", TINY, "--set", "schedule.decay_fracton=0.3", "--set", "optim.lr=fast"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "densa check: error: 2 problems:",
        "  - --set: optim.lr: expected float, got str 'fast'",
        "  - --set: schedule.decay_fracton: unknown key (did you mean 'decay_fraction'?)",
    ]


def test_check_world_size_batch_arithmetic(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", TINY, "--world-size", "3", "--quiet"]) == 1
    assert "batch.global_tokens: 1024 is not divisible" in capsys.readouterr().err


def test_launch_dry_run(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["launch", TINY, "--nproc", "2", "--dry-run", "--set", "train.steps=20"]) == 0
    captured = capsys.readouterr()
    assert captured.out == (
        f"deepspeed --num_gpus 2 --no_local_rank --module densa.train {TINY} --set train.steps=20\n"
    )
    assert "world size 2 = dp 2 × tp 1; grad_accum 2 × micro_batch 4" in captured.err
    hosts = tmp_path / "hosts"
    hosts.write_text("localhost slots=4\n")
    assert main(["launch", TINY, "--hostfile", str(hosts), "--launcher", "torchrun", "--dry-run"]) == 0
    assert capsys.readouterr().out == f"torchrun --standalone --nproc_per_node 4 -m densa.train {TINY}\n"


def test_launch_validates_before_starting(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(supervise, "run_job", lambda *a, **k: pytest.fail("must not start"))
    assert main(["launch", TINY, "--nproc", "3"]) == 1
    assert (
        "1024 is not divisible by data.seq_len × batch.micro_batch × dp = 64 × 4 × 3"
        in capsys.readouterr().err
    )


def test_launch_runs_command_and_returns_its_status(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []

    def fake_run_job(cmd: list[str], grace_s: float) -> int:
        seen.append((cmd, grace_s))
        return 7

    monkeypatch.setattr(supervise, "run_job", fake_run_job)
    assert main(["launch", TINY, "--nproc", "1", "--launcher", "torchrun", "--stop-grace", "30"]) == 7
    cmd, grace_s = seen[0]
    assert Path(cmd[0]).name == "torchrun" and cmd[-3:] == ["-m", "densa.train", TINY] and grace_s == 30
