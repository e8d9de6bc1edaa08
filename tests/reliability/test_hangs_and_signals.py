"""No hang, no lost steps, no orphans (issue 17): a stopped rank ends the job within $DENSA_DIST_TIMEOUT_S,
Ctrl-C / SIGTERM on `densa launch` make the ranks save a checkpoint and exit 0, and no process of the job
outlives `densa launch`.

The fast tests drive `densa.launch.supervise.Job` over `fake_launcher.py`, a stand-in that behaves like
DeepSpeed's per-node launcher (SIGTERMs the ranks on a signal or a failed rank, SIGKILLs them 30 s later).
The `slow` ones run `densa launch --nproc 2` on DeepSpeed's real launcher with a tiny model.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from densa.launch.supervise import is_rank_command

FAKE = str(Path(__file__).with_name("fake_launcher.py"))
DIST_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def _wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"exited ({proc.returncode}) while waiting for {what}:\n{err[-4000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


def _session(sid: int) -> list[str]:
    """Processes still running in session `sid` (the test starts each supervisor as a session leader)."""
    left = []
    for proc in psutil.process_iter(["status", "cmdline"]):
        try:
            if os.getsid(proc.pid) == sid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                left.append(f"{proc.pid} {proc.info['status']} {' '.join(proc.info['cmdline'] or [])}")
        except (OSError, psutil.Error):
            pass
    return left


def _end(proc: subprocess.Popen, timeout: float) -> tuple[int, str, float]:
    """Wait for `proc`; its status, stderr and how long it took. Kills its session if it overruns."""
    start = time.monotonic()
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        for line in _session(proc.pid):
            os.kill(int(line.split()[0]), signal.SIGKILL)
        _, err = proc.communicate()
        pytest.fail(f"still running after {timeout}s:\n{err[-4000:]}")
    return proc.returncode, err, time.monotonic() - start


# ---------------------------------------------------------------------------------- fast: supervisor


def _supervise(out: Path, mode: str = "normal", grace: float = 30, n: int = 2) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, FAKE, "supervise", str(grace), str(out), str(n), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    if mode != "orphan":
        _wait_for(lambda: all((out / f"ready_{i}").exists() for i in range(n)), 60, "fake ranks", proc)
    return proc


def _fake_ranks(proc: subprocess.Popen) -> dict[int, psutil.Process]:
    ranks = {}
    for child in psutil.Process(proc.pid).children(recursive=True):
        cmd = child.cmdline()
        if "--fake-rank" in cmd:
            ranks[int(cmd[cmd.index("rank") + 2])] = child
    return ranks


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_stop_signal_reaches_each_rank_once_and_they_save(tmp_path, how):
    proc = _supervise(tmp_path)
    _wait_for(lambda: len(_fake_ranks(proc)) == 2, 10, "rank processes")
    if how == "ctrl-c":  # a terminal signals its foreground process group: the supervisor's, not the job's
        os.killpg(proc.pid, signal.SIGINT)
    else:
        proc.send_signal(signal.SIGTERM)
    status, err, seconds = _end(proc, 30)
    assert status == 0, err
    for i in range(2):  # exactly one SIGTERM each (a second would kill a rank mid-save), then a full save
        assert (tmp_path / f"signals_{i}").read_text() == "SIGTERM\n"
        assert (tmp_path / f"saved_{i}").read_text() == "SIGTERM"
    assert not (tmp_path / "launcher_signals").exists()  # the launcher never got to kill its ranks
    name = "SIGINT" if how == "ctrl-c" else "SIGTERM"
    assert f"received {name}: asked 2 rank(s) to save a checkpoint" in err
    assert "the ranks saved a checkpoint: run the same command to resume" in err
    assert _session(proc.pid) == []


def test_stopped_rank_is_continued_when_a_peer_fails(tmp_path):
    """Rank 1 is SIGSTOPped, rank 0 then fails (as on a collective timeout): the launcher's SIGTERM to rank
    1 takes effect at once instead of its 30 s SIGKILL, and the job ends with rank 0's status."""
    proc = _supervise(tmp_path)
    _wait_for(lambda: len(_fake_ranks(proc)) == 2, 10, "rank processes")
    _fake_ranks(proc)[1].suspend()
    (tmp_path / "fail_0").write_text("")
    status, err, seconds = _end(proc, 60)
    assert status == 3, err
    assert seconds < 15, err  # not the launcher's 30 s
    assert "are stopped with a SIGTERM pending: continuing them (SIGCONT)" in err
    assert (tmp_path / "signals_1").read_text() == "SIGTERM\n"
    assert _session(proc.pid) == []


def test_processes_left_by_the_launcher_are_ended(tmp_path):
    proc = _supervise(tmp_path, mode="orphan")
    status, err, seconds = _end(proc, 60)
    assert status == 0, err
    assert "of the job remain: ending them" in err
    assert _session(proc.pid) == []


@pytest.mark.parametrize("how", ["grace", "second-signal"])
def test_ranks_that_do_not_stop_are_killed(tmp_path, how):
    proc = _supervise(tmp_path, mode="slow", grace=2 if how == "grace" else 60)
    _wait_for(lambda: len(_fake_ranks(proc)) == 2, 10, "rank processes")
    proc.send_signal(signal.SIGINT)
    if how == "second-signal":
        _wait_for(lambda: (tmp_path / "signals_1").exists(), 10, "the forwarded SIGTERM")
        proc.send_signal(signal.SIGINT)
    status, err, seconds = _end(proc, 30)
    assert status == 128 + signal.SIGKILL, err
    assert seconds < 15 and not (tmp_path / "saved_0").exists()
    expected = "did not stop within 2s" if how == "grace" else "received SIGINT again: killing the job"
    assert expected in err
    assert _session(proc.pid) == []


def test_is_rank_command():
    assert is_rank_command(["/venv/bin/python", "-u", "-m", "densa.train", "r.yaml"])  # deepspeed's ranks
    assert is_rank_command(["python3", "-X", "dev", "-m", "densa.train"])
    assert not is_rank_command(["/venv/bin/python", "/venv/bin/torchrun", "-m", "densa.train", "r.yaml"])
    assert not is_rank_command(["/venv/bin/python", "/venv/bin/deepspeed", "--module", "densa.train"])
    assert not is_rank_command(
        ["python", "-u", "-m", "deepspeed.launcher.launch", "--module", "--no_local_rank", "densa.train"]
    )
    assert not is_rank_command(["python", "-m", "densa.train.other"])


GROUP_TIMEOUTS = """
import torch
from deepspeed.utils import groups
from megatron.core import parallel_state
from densa.models.parallel import init_tensor_parallel
from densa.train.engine import init_distributed

init_distributed(7)
init_tensor_parallel(1)
made_later = [
    groups._clone_world_group(),  # DeepSpeed's data-parallel group: its gradient all-reduce runs here
    parallel_state.get_tensor_model_parallel_group(),
    parallel_state.get_data_parallel_group(),
]
print([g._get_backend(torch.device("cpu")).options._timeout.total_seconds() for g in made_later])
"""


def test_groups_created_after_init_get_the_dist_timeout():
    """The root cause of the hang: torch gives `new_group()` its 30-min default, not the world's timeout."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for key in DIST_ENV:
        env.pop(key, None)
    out = subprocess.run(
        [sys.executable, "-c", GROUP_TIMEOUTS], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "[7.0, 7.0, 7.0]"


def test_peer_failure_message(monkeypatch):
    from densa.train.failures import peer_failure_message

    gloo = RuntimeError(
        "[gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting 20000ms for recv operation"
    )
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("DENSA_DIST_TIMEOUT_S", "20")
    message = peer_failure_message(gloo)
    assert message.startswith(
        "rank 1: a collective failed ($DENSA_DIST_TIMEOUT_S=20 s): another rank is dead"
    )
    assert message.endswith("(" + str(gloo) + ")")
    assert peer_failure_message(RuntimeError("Connection closed by peer [127.0.0.1]:1234"))
    assert peer_failure_message(RuntimeError("shape mismatch")) is None
    assert peer_failure_message(ValueError("Timed out waiting")) is None
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert peer_failure_message(gloo) is None


def test_timeouts_from_the_environment(monkeypatch):
    from densa.errors import DensaError
    from densa.train.failures import dist_timeout_s, watchdog_timeout_s

    monkeypatch.delenv("DENSA_DIST_TIMEOUT_S", raising=False)
    monkeypatch.delenv("DENSA_WATCHDOG_S", raising=False)
    assert (dist_timeout_s(), watchdog_timeout_s()) == (600.0, 1800.0)
    monkeypatch.setenv("DENSA_DIST_TIMEOUT_S", "20")
    assert (dist_timeout_s(), watchdog_timeout_s()) == (20.0, 60.0)  # the watchdog follows
    monkeypatch.setenv("DENSA_WATCHDOG_S", "0")
    assert watchdog_timeout_s() == 0.0  # off
    for bad in ("soon", "0", "-5"):
        monkeypatch.setenv("DENSA_DIST_TIMEOUT_S", bad)
        with pytest.raises(DensaError, match="DENSA_DIST_TIMEOUT_S"):
            dist_timeout_s()


# ------------------------------------------------------------------ slow: densa launch --nproc 2, deepspeed

WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "while",
    "the",
    "cat",
    "sleeps",
    "on",
    "the",
    "warm",
    "mat",
]


@pytest.fixture(scope="module")
def recipe(tmp_path_factory) -> Path:
    """Tokenized data and a recipe that trains (far) longer than any test waits."""
    from densa.data.preprocess import preprocess
    from densa.data.sp_train import train_sentencepiece

    root = tmp_path_factory.mktemp("hang_data")
    rng = random.Random(0)
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 20))) for _ in range(500)]
    (root / "corpus.txt").write_text("\n".join(lines) + "\n")
    tok = train_sentencepiece([root / "corpus.txt"], root / "tok", vocab_size=320)
    (root / "train.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in lines))
    preprocess([root / "train.jsonl"], tok, root / "train")
    path = root / "recipe.yaml"
    path.write_text(
        f"""
run: {{name: hang, out_dir: {root / "run"}, seed: 1}}
model: {{vocab_size: 384, dim: 32, n_layers: 2, n_heads: 4, ffn_dim: 64, max_seq_len: 32}}
data: {{train: [{{path: {root / "train"}}}], seq_len: 32, tokenizer: {tok}}}
batch: {{global_tokens: 256, micro_batch: 4}}
optim: {{lr: 0.01}}
schedule: {{kind: cosine, warmup_steps: 2}}
train: {{steps: 1000000}}
checkpoint: {{interval: 1000000, keep_last: 2}}
logging: {{log_interval: 1, progress: false, tensorboard: false}}
"""
    )
    return path


def _launch(recipe: Path, run: Path, *sets: str, timeout_s: int = 15) -> subprocess.Popen:
    from densa.testing.distributed import find_free_port

    env = dict(os.environ, OMP_NUM_THREADS="1", DENSA_DIST_TIMEOUT_S=str(timeout_s))
    for key in DIST_ENV:
        env.pop(key, None)
    args = ["launch", str(recipe), "--nproc", "2", "--master-port", str(find_free_port())]
    args += ["--set", f"run.out_dir={run}", *[a for s in sets for a in ("--set", s)]]
    return subprocess.Popen(
        [sys.executable, "-m", "densa.launch.cli", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _steps_logged(run: Path) -> int:
    metrics = run / "metrics.jsonl"
    if not metrics.is_file():
        return 0
    return max((json.loads(line).get("step", 0) for line in metrics.read_text().splitlines()), default=0)


def _ranks(proc: subprocess.Popen) -> list[psutil.Process]:
    children = psutil.Process(proc.pid).children(recursive=True)
    return sorted((c for c in children if is_rank_command(c.cmdline())), key=lambda c: c.create_time())


@pytest.mark.slow
@pytest.mark.distributed
def test_stopped_rank_ends_the_job_within_the_dist_timeout(tmp_path, recipe):
    timeout_s = 15
    proc = _launch(recipe, tmp_path / "run", timeout_s=timeout_s)
    _wait_for(lambda: _steps_logged(tmp_path / "run") >= 3, 240, "training steps", proc)
    ranks = _ranks(proc)
    assert len(ranks) == 2
    ranks[1].suspend()  # SIGSTOP: its TCP connections stay open, only the collective timeout can tell
    status, err, seconds = _end(proc, timeout_s + 90)
    assert status != 0, err
    assert seconds < timeout_s + 20, err
    assert "rank 0: a collective failed ($DENSA_DIST_TIMEOUT_S=15 s)" in err
    assert _session(proc.pid) == []


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_stop_signal_saves_the_current_step_and_resumes(tmp_path, recipe, how):
    from densa.train.checkpoint import complete_checkpoints

    run = tmp_path / "run"
    proc = _launch(recipe, run)
    _wait_for(lambda: _steps_logged(run) >= 3, 240, "training steps", proc)
    if how == "ctrl-c":
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal does: the foreground process group
    else:
        proc.send_signal(signal.SIGTERM)
    status, err, seconds = _end(proc, 120)
    assert status == 0, err
    assert err.count("densa: received SIGTERM; saving a checkpoint after this step") == 2
    step = _steps_logged(run)
    assert f"stopped at step {step} on request; checkpoint saved" in err
    assert [s for s, _ in complete_checkpoints(run)] == [step]
    assert _session(proc.pid) == []
    if how == "sigterm":
        return
    again = _launch(recipe, run, f"train.steps={step + 2}")
    status, err, _ = _end(again, 240)
    assert status == 0, err
    assert f"at step {step}" in err and "resumed from" in err
    assert [s for s, _ in complete_checkpoints(run)] == [step, step + 2]
    assert _session(again.pid) == []
