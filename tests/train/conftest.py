"""Trainer test fixtures: one in-process DeepSpeed world (gloo, world 1) per module, torn down after it,
so fork-based distributed tests elsewhere never inherit a live process group."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

# Test modules and the rank scripts import trainer_helpers by name (pytest runs with --import-mode=importlib).
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="module")
def ds_world():
    from densa.train.engine import init_distributed, shutdown_distributed

    saved = {k: os.environ.get(k) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    for k in saved:
        os.environ.pop(k, None)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threads only add contention on 2 cores
    world = init_distributed(timeout_s=120)
    yield world
    torch.set_num_threads(threads)
    shutdown_distributed()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
