"""Device timing for kernel benchmarks (the torch.cuda calls live here, not in benchmarks/)."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return f"{torch.cuda.get_device_name(device)} (sm_{major}{minor})"
    return f"cpu ({device})"


def time_interleaved_device(
    fns: dict[str, Callable[[], object]], repeats: int, device: torch.device, warmup: int = 2
) -> dict[str, list[float]]:
    """Seconds per call, functions alternated each repeat; CUDA events on GPU, perf_counter on CPU."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            if cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times[name].append(start.elapsed_time(end) / 1e3)
            else:
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    return times


def peak_memory(device: torch.device, reset: bool = False) -> int:
    """Peak bytes allocated on a CUDA device since the last reset (0 on CPU); `reset=True` starts over."""
    if device.type != "cuda":
        return 0
    if reset:
        torch.cuda.reset_peak_memory_stats(device)
        return 0
    return torch.cuda.max_memory_allocated(device)
