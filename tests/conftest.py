"""Shared pytest setup: offline hubs, deterministic torch, markers."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU; skipped on CPU")
    config.addinivalue_line("markers", "slow: longer than the default suite allows")
    config.addinivalue_line("markers", "distributed: spawns several gloo processes")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


LAUNCHER_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture(autouse=True)
def _restore_launcher_env():
    """An in-process trainer sets RANK/WORLD_SIZE/MASTER_* (DeepSpeed needs them); put them back after each
    test, so later tests (and the commands they start) do not think they run under a launcher."""
    saved = {k: os.environ.get(k) for k in LAUNCHER_ENV}
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def ds_world():
    """One in-process DeepSpeed world (gloo, world 1) per module, torn down after it, so fork-based
    distributed tests elsewhere never inherit a live process group. The launcher variables are dropped
    while it lives and the ones that were there put back."""
    from densa.train.engine import init_distributed, shutdown_distributed

    saved = {k: os.environ.pop(k, None) for k in LAUNCHER_ENV}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threads only add contention on 2 cores
    world = init_distributed(timeout_s=120)
    yield world
    torch.set_num_threads(threads)
    shutdown_distributed()
    for k, v in saved.items():  # put back what was there, and drop what init_distributed added
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
