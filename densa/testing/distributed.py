"""Run a function on N local gloo ranks and bring results or failures back to the caller.

Modelled on OLMo-core's `run_distributed_test`: each rank runs `fn(*args, **kwargs)` inside an initialised
`torch.distributed` process group; return values come back as a list indexed by rank; an exception on
any rank is re-raised in the parent with that rank's traceback; a hang fails after `timeout` seconds
with the ranks that did not finish named, instead of blocking pytest forever.
"""

from __future__ import annotations

import contextlib
import datetime
import multiprocessing as mp
import os
import pickle
import queue
import socket
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist


class DistributedTestError(RuntimeError):
    """A rank raised, died or timed out; the message carries every rank's traceback that arrived."""


def find_free_port() -> int:
    """A TCP port that was free a moment ago (the OS picks it; a race with other binders is possible)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(
    rank: int,
    world_size: int,
    port: int,
    backend: str,
    timeout: float,
    num_threads: int,
    fn: Callable[..., Any],
    args: tuple,
    kwargs: dict,
    results: Any,
) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
    )
    # One intra-op thread per rank also keeps forked children out of the parent's OpenMP pool,
    # which deadlocks when a fork happens after the parent ran parallel ops.
    torch.set_num_threads(num_threads)
    try:
        dist.init_process_group(
            backend,
            rank=rank,
            world_size=world_size,
            timeout=datetime.timedelta(seconds=timeout),
        )
        torch.manual_seed(0)
        value = fn(*args, **kwargs)
        # Plain pickle copies tensor data; torch's ForkingPickler would pass shared-memory handles
        # that die with this process.
        payload = ("ok", pickle.dumps(value))
    except BaseException as exc:  # noqa: BLE001 - every failure must reach the parent
        payload = ("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}")
    finally:
        with contextlib.suppress(Exception):
            if dist.is_initialized():
                dist.destroy_process_group()
    results.put((rank, *payload))


def run_distributed(
    fn: Callable[..., Any],
    world_size: int = 2,
    *,
    args: tuple = (),
    kwargs: dict[str, Any] | None = None,
    timeout: float = 120.0,
    backend: str = "gloo",
    start_method: str | None = None,
    num_threads: int | None = None,
) -> list[Any]:
    """Run `fn(*args, **kwargs)` on `world_size` processes; return each rank's return value, by rank.

    `start_method` defaults to "fork" where the OS has it: children start in milliseconds instead of
    re-importing torch and megatron (~7 s per call on 2 cores) and `fn` may be a closure. Fork is safe
    here because each child drops to one intra-op thread before touching torch and the parent may not
    hold a process group; a parent that initialised CUDA must pass "spawn". With "spawn", `fn` and its
    arguments must be picklable (a module-level function).
    Raises DistributedTestError when a rank raises, exits without reporting, or `timeout` passes.
    """
    if start_method is None:
        start_method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    if start_method == "fork" and dist.is_initialized():
        raise RuntimeError(
            "run_distributed: cannot fork from a process that holds a process group; use spawn"
        )
    ctx = mp.get_context(start_method)
    results = ctx.Queue()
    port = find_free_port()
    threads = num_threads or (1 if start_method == "fork" else max(1, (os.cpu_count() or 1) // world_size))
    procs = [
        ctx.Process(
            target=_worker,
            args=(rank, world_size, port, backend, timeout, threads, fn, args, kwargs or {}, results),
            name=f"densa-rank{rank}",
            daemon=True,
        )
        for rank in range(world_size)
    ]
    for p in procs:
        p.start()

    values: dict[int, Any] = {}
    errors: dict[int, str] = {}
    deadline = time.monotonic() + timeout
    first_error_at: float | None = None
    try:
        while len(values) + len(errors) < world_size and time.monotonic() < deadline:
            # After one rank fails the others are most likely blocked in a collective with it:
            # give them a moment to report their own errors, then stop waiting.
            if first_error_at is not None and time.monotonic() > first_error_at + 5.0:
                break
            try:
                rank, status, payload = results.get(timeout=0.2)
            except queue.Empty:
                for rank, p in enumerate(procs):
                    if p.exitcode not in (None, 0) and rank not in values and rank not in errors:
                        errors[rank] = f"process exited with code {p.exitcode} without reporting"
            else:
                if status == "ok":
                    values[rank] = pickle.loads(payload)
                else:
                    errors[rank] = payload
            if errors and first_error_at is None:
                first_error_at = time.monotonic()
    finally:
        for p in procs:
            p.join(timeout=1.0 if len(values) == world_size else 0.1)
            if p.is_alive():
                p.kill()
                p.join()
        results.close()

    missing = [r for r in range(world_size) if r not in values and r not in errors]
    if errors:
        parts = [f"--- rank {r} ---\n{errors[r]}" for r in sorted(errors)]
        if missing:
            parts.append(f"ranks {missing} did not report (presumably waiting on the failed ranks)")
        raise DistributedTestError(f"{len(errors)} of {world_size} ranks failed:\n" + "\n".join(parts))
    if missing:
        raise DistributedTestError(
            f"timed out after {timeout:.0f}s: ranks {missing} of {world_size} did not finish "
            "(a collective not reached by every rank, or too small a timeout)"
        )
    return [values[r] for r in range(world_size)]
