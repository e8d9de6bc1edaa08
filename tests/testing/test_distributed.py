"""run_distributed: results by rank, failures carried to the parent with rank and traceback, timeouts."""

from __future__ import annotations

import os
import time

import pytest
import torch
import torch.distributed as dist

from densa.testing import DistributedTestError, run_distributed

pytestmark = pytest.mark.distributed


def _all_reduce_rank() -> tuple[int, int, float]:
    t = torch.tensor([float(dist.get_rank())])
    dist.all_reduce(t)
    return dist.get_rank(), dist.get_world_size(), t.item()


def _fail_on_rank_1() -> None:
    if dist.get_rank() == 1:
        raise ValueError("boom from rank one")
    dist.barrier()  # rank 0 is left waiting on the failed rank, as in a real collective


def _exit_on_rank_0() -> None:
    if dist.get_rank() == 0:
        os._exit(3)


def _hang_on_rank_1() -> None:
    if dist.get_rank() == 1:
        time.sleep(60)


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_returns_values_by_rank(start_method: str) -> None:
    assert run_distributed(_all_reduce_rank, world_size=2, start_method=start_method, timeout=60) == [
        (0, 2, 1.0),
        (1, 2, 1.0),
    ]


def test_closure_under_fork() -> None:
    offset = 10
    assert run_distributed(lambda: dist.get_rank() + offset, world_size=2) == [10, 11]


def test_exception_names_rank_and_traceback() -> None:
    with pytest.raises(
        DistributedTestError, match=r"(?s)rank 1.*ValueError: boom from rank one.*_fail_on_rank_1"
    ):
        run_distributed(_fail_on_rank_1, world_size=2, timeout=30)


def test_dead_process_is_reported() -> None:
    with pytest.raises(DistributedTestError, match=r"rank 0 ---\nprocess exited with code 3"):
        run_distributed(_exit_on_rank_0, world_size=2, timeout=30)


def test_timeout_names_the_hung_rank() -> None:
    start = time.monotonic()
    with pytest.raises(DistributedTestError, match=r"timed out after 3s: ranks \[1\] of 2"):
        run_distributed(_hang_on_rank_1, world_size=2, timeout=3)
    assert time.monotonic() - start < 10
