"""Stand-ins for the supervisor's tests, one script in three roles (each a real process):

    fake_launcher.py supervise GRACE_S OUT N MODE   `densa.launch.supervise.Job` over `launcher OUT N MODE`
    fake_launcher.py launcher OUT N MODE            DeepSpeed's per-node launcher, as in its launch.py
    fake_launcher.py rank OUT I SAVE_S              a rank: SIGTERM/SIGINT -> "save" for SAVE_S, exit 0

The launcher behaves like `deepspeed/launcher/launch.py` (0.19): on SIGINT/SIGTERM, or when a rank exits
non-zero, it SIGTERMs every rank and SIGKILLs them 30 s later, then exits with the failing rank's status.
MODE `orphan` makes it exit 0 right after starting the ranks instead; MODE `slow` gives ranks a 60 s save.
A rank exits 3 (a failed collective) when OUT/fail_I appears; it writes ready_I once its handlers are in,
signals_I (one line per signal) and saved_I (after its save).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path


def rank(out: Path, index: str, save_s: float) -> int:
    received: list[str] = []

    def handle(signum, frame):
        with open(out / f"signals_{index}", "a") as f:
            f.write(signal.Signals(signum).name + "\n")
        if received:  # like densa's StopSignal: a second signal is the default, immediate death
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)
        received.append(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    (out / f"ready_{index}").write_text("")
    while not received:
        if (out / f"fail_{index}").exists():
            return 3
        time.sleep(0.05)
    time.sleep(save_s)
    (out / f"saved_{index}").write_text(received[0])
    return 0


def launcher(out: Path, n: int, mode: str) -> int:
    save_s = "60" if mode == "slow" else "1"
    ranks = [
        subprocess.Popen([sys.executable, __file__, "rank", str(out), str(i), save_s, "--fake-rank"])
        for i in range(n)
    ]
    if mode == "orphan":
        return 0
    failed: list[int] = []

    def stop_all(signum, frame):
        with open(out / "launcher_signals", "a") as f:
            f.write(signal.Signals(signum).name + "\n")
        failed.append(1)

    signal.signal(signal.SIGTERM, stop_all)
    signal.signal(signal.SIGINT, stop_all)
    while any(p.poll() is None for p in ranks):
        bad = [p.returncode for p in ranks if p.returncode not in (None, 0)]
        if bad or failed:
            for p in ranks:
                if p.poll() is None:
                    p.terminate()
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and any(p.poll() is None for p in ranks):
                time.sleep(0.1)
            for p in ranks:
                if p.poll() is None:
                    p.kill()
            return bad[0] if bad else 1
        time.sleep(0.1)
    return max(p.returncode for p in ranks)


def supervise(grace_s: float, out: str, n: str, mode: str) -> int:
    from densa.launch.supervise import Job

    argv = [sys.executable, __file__, "launcher", out, n, mode]
    return Job(argv, grace_s=grace_s, poll_s=0.2, is_rank=lambda cmd: "--fake-rank" in cmd).run()


if __name__ == "__main__":
    role, *args = sys.argv[1:]
    if role == "rank":
        sys.exit(rank(Path(args[0]), args[1], float(args[2])))
    if role == "launcher":
        sys.exit(launcher(Path(args[0]), int(args[1]), args[2]))
    sys.exit(supervise(float(args[0]), *args[1:4]))
