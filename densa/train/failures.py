"""What the trainer does when things go wrong around it: bad output dir, signals, dead peers.

- `preflight(run_dir, ...)`: the run dir must be creatable and writable and the disk must hold the
  checkpoints the run will keep; checked before any model or process group exists, so the error is the
  first thing a user sees, not an exception after an hour of training.
- `StopSignal`: SIGTERM/SIGINT set a flag; the loop agrees on it across ranks at the next step, saves a
  checkpoint and exits 0 (a second signal falls back to the default, immediate behaviour).
- `Watchdog`: a daemon thread that ends the process with a message when no step finished within
  `timeout_s`. It backs up the process-group timeout for hangs outside collectives (and for peers that
  are alive but stuck), so one dead or wedged rank never leaves the others waiting forever.
- `dist_timeout_s()` / `watchdog_timeout_s()`: `$DENSA_DIST_TIMEOUT_S` bounds every collective (default
  600 s); `$DENSA_WATCHDOG_S` defaults to three times that (1800 s), so changing the one moves the other.
- `peer_failure_message(err)`: turns a collective that timed out or lost its peer into one clear line.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import threading
import time
import uuid
from pathlib import Path
from types import FrameType

from densa.errors import DensaError

DIST_TIMEOUT_ENV = "DENSA_DIST_TIMEOUT_S"  # bound on every collective (gloo/nccl timeout), seconds
DEFAULT_DIST_TIMEOUT_S = 600.0
WATCHDOG_ENV = "DENSA_WATCHDOG_S"  # seconds without a finished step before a rank gives up (0: off)
WATCHDOG_PER_DIST_TIMEOUT = 3  # default watchdog = 3 x the collective timeout (1800 s by default)
# Text of the errors torch raises when a collective's peer is dead, stopped or stuck (gloo and NCCL).
_PEER_FAILURES = (
    "Timed out waiting",
    "timed out",
    "Timeout",
    "Connection closed by peer",
    "Connection reset by peer",
    "Broken pipe",
    "NCCL communicator was aborted",
)

# Bytes per parameter in a checkpoint: fp32 weights + AdamW exp_avg and exp_avg_sq, plus a fp32 master
# copy under mixed precision or ZeRO (DeepSpeed keeps module weights and optimizer partitions apart).
CHECKPOINT_BYTES_PER_PARAM = 16


class RunDirError(DensaError):
    """The run directory cannot hold this run."""


def _seconds_from_env(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise DensaError(f"${name} must be a number of seconds >= 0, got {raw!r}")
    return value


def dist_timeout_s() -> float:
    """`$DENSA_DIST_TIMEOUT_S`: how long any collective may wait for its peers (default 600 s)."""
    timeout = _seconds_from_env(DIST_TIMEOUT_ENV, DEFAULT_DIST_TIMEOUT_S)
    if timeout <= 0:
        raise DensaError(f"${DIST_TIMEOUT_ENV} must be > 0 seconds, got {timeout:g}")
    return timeout


def watchdog_timeout_s() -> float:
    """`$DENSA_WATCHDOG_S` (0: off), else 3 x the collective timeout: a step that waits on peers for
    longer than that is stuck outside the collectives the process-group timeout bounds."""
    return _seconds_from_env(WATCHDOG_ENV, WATCHDOG_PER_DIST_TIMEOUT * dist_timeout_s())


def peer_failure_message(err: BaseException) -> str | None:
    """One clear line for a collective that failed because a peer rank is dead, stopped or stuck (the
    process-group timeout fired or the connection was closed); None for any other error, or in a world
    of one. torch.distributed.DistError and its subclasses are RuntimeErrors."""
    text = str(err).strip()
    if os.environ.get("WORLD_SIZE", "1") in ("", "1") or not isinstance(err, RuntimeError):
        return None
    if not any(pattern in text for pattern in _PEER_FAILURES):
        return None
    timeout = os.environ.get(DIST_TIMEOUT_ENV) or f"{DEFAULT_DIST_TIMEOUT_S:g} (default)"
    return (
        f"rank {os.environ.get('RANK', '?')}: a collective failed (${DIST_TIMEOUT_ENV}={timeout} s):"
        " another rank is dead, stopped or stuck, so this one stops too; the run resumes from its last"
        f" checkpoint when started again. ({text.splitlines()[0] if text else type(err).__name__})"
    )


def estimate_checkpoint_bytes(num_params: int) -> int:
    return num_params * CHECKPOINT_BYTES_PER_PARAM


def preflight(run_dir: str | os.PathLike, num_params: int, keep_last: int) -> None:
    """Raise RunDirError unless `run_dir` is writable and has room for keep_last + 1 checkpoints."""
    path = Path(run_dir)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{uuid.uuid4().hex}"
        probe.write_bytes(b"densa")
        probe.unlink()
    except OSError as err:
        raise RunDirError(f"run.out_dir {path} is not writable: {err.strerror or err}") from None
    need = estimate_checkpoint_bytes(num_params) * (keep_last + 1)
    free = shutil.disk_usage(path).free
    if free < need:
        raise RunDirError(
            f"run.out_dir {path}: {free / 2**30:.2f} GiB free, but keeping {keep_last} checkpoints of"
            f" {num_params:,} parameters needs about {need / 2**30:.2f} GiB (plus one being written);"
            " free space, lower checkpoint.keep_last or choose another run.out_dir"
        )


class StopSignal:
    """Turns SIGTERM/SIGINT into a flag the loop polls; restores the previous handlers on `close`."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, object] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None:  # second signal: stop waiting for the checkpoint
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.received = signum
        print(
            f"densa: received {signal.Signals(signum).name}; saving a checkpoint after this step",
            file=sys.stderr,
            flush=True,
        )

    @property
    def requested(self) -> bool:
        return self.received is not None

    def close(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


class Watchdog:
    """Exit the process (status 3) if `beat()` is not called for `timeout_s` seconds."""

    EXIT_CODE = 3

    def __init__(self, timeout_s: float, rank: int = 0) -> None:
        self.timeout_s, self.rank = timeout_s, rank
        self._last = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="densa-watchdog", daemon=True)
        if timeout_s > 0:
            self._thread.start()

    def beat(self) -> None:
        self._last = time.monotonic()

    def _run(self) -> None:
        while not self._stop.wait(min(5.0, self.timeout_s / 4)):
            idle = time.monotonic() - self._last
            if idle > self.timeout_s:
                print(
                    f"densa: rank {self.rank}: no progress for {idle:.0f}s (watchdog timeout"
                    f" {self.timeout_s:.0f}s); another rank probably died. Exiting.",
                    file=sys.stderr,
                    flush=True,
                )
                os._exit(self.EXIT_CODE)

    def close(self) -> None:
        self._stop.set()
