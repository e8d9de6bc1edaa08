"""Run a launcher command (deepspeed, torchrun) as one job that stops cleanly and leaves nothing behind.

What the launchers do on their own, and why `densa launch` does not let them (DeepSpeed 0.19, read from
`deepspeed/launcher/{runner,launch}.py`):
- SIGTERM to the `deepspeed` runner kills only the runner: on one machine it installs no handler, so the
  per-node launcher and the ranks run on as orphans.
- Ctrl-C in a terminal signals the whole foreground process group: every rank starts its checkpoint, and
  the per-node launcher at the same moment sends each rank SIGTERM, a second signal, which kills it mid-save.
- When a rank fails, the per-node launcher SIGTERMs the others and SIGKILLs them 30 s later; a rank that is
  stopped (SIGSTOP, a debugger) cannot act on that SIGTERM, so the job lingers those 30 s.

So `run_job` starts the launcher in a process group of its own (the terminal's Ctrl-C reaches
`densa launch` only) and:
- on SIGINT, SIGTERM or SIGHUP sends every local rank (a descendant running `python -m densa.train`) one
  SIGTERM, and SIGCONT in case it is stopped. Each rank finishes its step, the ranks agree on stopping,
  save a checkpoint and exit 0, and the launchers see clean exits. It waits up to `grace_s` for that; a
  second signal, or the grace running out, kills the job's process group instead. With no local rank
  (not started yet, or all on other hosts) the launcher's process group gets the SIGTERM.
- sends SIGCONT to a rank that is stopped while a SIGTERM waits for it (its launcher ending the job after
  another rank failed), so it acts on it and fails fast on its dead peer instead of being SIGKILLed 30 s
  later (Linux: read from /proc/PID/status);
- when the launcher exits, ends whatever is left in the job's process group (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import psutil

from densa.launch.launcher import TRAIN_MODULE

DEFAULT_STOP_GRACE_S = 600.0
LEFTOVER_GRACE_S = 10.0
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_PYTHON_OPTIONS_WITH_VALUE = {"-W", "-X", "-Q"}


def is_rank_command(cmdline: Sequence[str], module: str = TRAIN_MODULE) -> bool:
    """True for `python [options] -m MODULE ...`: `-m` must be an interpreter option, so launchers that take
    their own `-m MODULE` (`torchrun ... -m densa.train`, run as `python .../torchrun`) do not count."""
    args = list(cmdline[1:])
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "-m":
            return args[i + 1 : i + 2] == [module]
        if not arg.startswith("-"):
            return False
        i += 2 if arg in _PYTHON_OPTIONS_WITH_VALUE else 1
    return False


def _status(returncode: int) -> int:
    """A shell-style exit status: 128 + N for a process ended by signal N."""
    return 128 - returncode if returncode < 0 else returncode


class Job:
    """One launcher process and its descendants, in their own process group."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        grace_s: float = DEFAULT_STOP_GRACE_S,
        poll_s: float = 0.5,
        is_rank: Callable[[Sequence[str]], bool] = is_rank_command,
        env: dict[str, str] | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.argv, self.env, self.is_rank = list(argv), env, is_rank
        self.grace_s, self.poll_s = grace_s, poll_s
        self.log = log or (lambda msg: print(f"densa launch: {msg}", file=sys.stderr, flush=True))
        self.proc: subprocess.Popen | None = None
        self.stop_signal: int | None = None
        self._deadline: float | None = None
        self._ranks: dict[int, psutil.Process] = {}
        self._pending: list[int] = []
        self._continued: set[int] = set()

    # ------------------------------------------------------------------------------ processes

    @property
    def pgid(self) -> int:
        assert self.proc is not None
        return self.proc.pid  # the launcher leads its own process group

    def ranks(self) -> list[psutil.Process]:
        """The job's rank processes alive now (remembered once seen, so ones re-parented count too)."""
        try:
            for child in psutil.Process(self.pgid).children(recursive=True):
                if child.pid not in self._ranks:
                    try:
                        if self.is_rank(child.cmdline()):
                            self._ranks[child.pid] = child
                    except psutil.Error:
                        pass
        except psutil.Error:
            pass
        alive = []
        for proc in self._ranks.values():
            try:
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    alive.append(proc)
            except psutil.Error:
                pass
        return alive

    def _killpg(self, sig: int) -> None:
        """Signal the job's process group (nothing happens when it is empty)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pgid, sig)

    def group_alive(self) -> list[int]:
        """Pids of the job's process group that are still running (zombies waiting to be reaped are not)."""
        alive = []
        for proc in psutil.process_iter(["status"]):
            try:
                if os.getpgid(proc.pid) == self.pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                    alive.append(proc.pid)
            except (OSError, psutil.Error):
                pass
        return alive

    @staticmethod
    def _signal(procs: Sequence[psutil.Process], *sigs: int) -> None:
        for proc in procs:
            for sig in sigs:
                with contextlib.suppress(psutil.Error):
                    proc.send_signal(sig)

    # ------------------------------------------------------------------------------- signals

    def _on_signal(self, signum: int, frame: object) -> None:
        self._pending.append(signum)  # acted on by the polling loop: no psutil work inside a handler

    def _handle(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if self.stop_signal is not None:
            self.log(f"received {name} again: killing the job now (no checkpoint)")
            self._deadline = None
            self._killpg(signal.SIGKILL)
            return
        self.stop_signal = signum
        self._deadline = time.monotonic() + self.grace_s
        ranks = self.ranks()
        if ranks:
            self._signal(ranks, signal.SIGTERM, signal.SIGCONT)
            self.log(
                f"received {name}: asked {len(ranks)} rank(s) to save a checkpoint and stop (SIGTERM);"
                f" waiting up to {self.grace_s:.0f}s, signal again to kill them now"
            )
        else:
            self._killpg(signal.SIGTERM)
            self._killpg(signal.SIGCONT)
            self.log(f"received {name} before any rank started on this machine: stopping the launcher")

    # ---------------------------------------------------------------------------------- run

    def run(self) -> int:
        """Start the launcher, supervise it, return its exit status (128 + N if signal N ended it)."""
        kwargs: dict = {"process_group": 0} if sys.version_info >= (3, 11) else {"preexec_fn": os.setpgrp}
        previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
        for sig in STOP_SIGNALS:  # before the launcher starts, so no signal finds a half-started job
            signal.signal(sig, self._on_signal)
        try:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, env=self.env, **kwargs)
            while (returncode := self.proc.poll()) is None:
                self._watch()
                time.sleep(self.poll_s)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if self.proc is not None:
                self._end_leftovers()
        status = _status(returncode)
        if self.stop_signal is not None:
            name = signal.Signals(self.stop_signal).name
            if status == 0:
                self.log(f"stopped on {name}; the ranks saved a checkpoint: run the same command to resume")
            else:
                self.log(f"stopped on {name}; the launcher exited with status {status}")
        return status

    def _watch(self) -> None:
        while self._pending:
            self._handle(self._pending.pop(0))
        alive = self.ranks()
        if self._deadline is not None and time.monotonic() > self._deadline:
            self.log(f"the ranks did not stop within {self.grace_s:.0f}s of the signal: killing the job")
            self._deadline = None
            self._killpg(signal.SIGKILL)
            return
        stuck = [p for p in alive if p.pid not in self._continued and _stopped_with_stop_pending(p.pid)]
        if stuck:
            pids = ", ".join(str(p.pid) for p in stuck)
            self.log(f"rank pid(s) {pids} are stopped with a SIGTERM pending: continuing them (SIGCONT)")
            self._signal(stuck, signal.SIGCONT)
            self._continued.update(p.pid for p in stuck)

    def _end_leftovers(self) -> None:
        """After the launcher exited: SIGTERM (+SIGCONT) what is left of the job, SIGKILL after a grace."""
        if self.proc.poll() is None:  # we are unwinding from an exception: the launcher goes too
            self._killpg(signal.SIGKILL)
            self.proc.wait()
        left = self.group_alive()
        if not left:
            return
        self.log(
            f"the launcher exited, but pid(s) {', '.join(map(str, left))} of the job remain: ending them"
        )
        self._killpg(signal.SIGTERM)
        self._killpg(signal.SIGCONT)
        deadline = time.monotonic() + LEFTOVER_GRACE_S
        while time.monotonic() < deadline and self.group_alive():
            time.sleep(0.2)
        self._killpg(signal.SIGKILL)


def _stopped_with_stop_pending(pid: int) -> bool:
    """Linux: the process is stopped (SIGSTOP, SIGTSTP) and a SIGTERM or SIGINT waits for it, which it
    cannot act on until continued. False where /proc cannot tell."""
    try:
        fields = dict(
            line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
        )
        if not fields["State"].strip().startswith("T"):
            return False
        pending = int(fields["ShdPnd"], 16) | int(fields["SigPnd"], 16)
    except (OSError, KeyError, ValueError):
        return False
    return any(pending & (1 << (sig - 1)) for sig in (signal.SIGTERM, signal.SIGINT))


def run_job(argv: Sequence[str], *, grace_s: float = DEFAULT_STOP_GRACE_S) -> int:
    """`Job(argv, grace_s=grace_s).run()`: what `densa launch` calls (tests replace it)."""
    return Job(argv, grace_s=grace_s).run()
