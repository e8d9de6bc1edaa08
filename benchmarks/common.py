"""Shared setup of the benchmark scripts: machine description, interleaved timing, result files, and the
quickstart data most of them measure on (paths relative to the repository root, which they run from)."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

RESULTS_DIR = Path(__file__).parent / "results"

QUICKSTART_DATA = "runs/quickstart/data"
"""Prefix folder of `make quickstart`'s tokenized corpus: QUICKSTART_DATA/train and QUICKSTART_DATA/valid."""
QUICKSTART_TOKENIZER = "runs/quickstart/tokenizer/tokenizer.model"
"""The SentencePiece model those prefixes were tokenized with."""


def ensure_quickstart_data(cfg: Any, corpus: str | None = None) -> None:
    """Build the quickstart tokenizer and train/valid prefixes with the quickstart pipeline when absent.

    `cfg`: a RunConfig whose data section names them (the pipeline reads its data and tokenizer keys)."""
    from densa.data.manifest import manifest_path

    prefixes = (f"{QUICKSTART_DATA}/{split}" for split in ("train", "valid"))
    if Path(QUICKSTART_TOKENIZER).exists() and all(manifest_path(p).exists() for p in prefixes):
        return
    from densa.data.fetch import fetch_corpus
    from densa.launch.quickstart import CORPUS, prepare_data

    prepare_data(cfg, fetch_corpus(corpus or CORPUS))


def reuse_or_reset_run(cfg: Any, run_dir: Path, trace_name: str, label: str, retrain: bool = False) -> Any:
    """The JSON trace of a finished run in `run_dir` trained from this very recipe (same resolved YAML, a
    checkpoint at train.steps), to reuse instead of training again; else None, after emptying `run_dir`."""
    import shutil

    from densa.config.load import dump_recipe
    from densa.train.checkpoint import complete_checkpoints

    trace_path, recipe = run_dir / trace_name, run_dir / "recipe.yaml"
    done = trace_path.exists() and recipe.exists() and recipe.read_text() == dump_recipe(cfg)
    steps = cfg.train.steps
    if done and not retrain and any(step == steps for step, _ in complete_checkpoints(run_dir)):
        print(f"{label}: reusing {run_dir}", flush=True)
        return json.loads(trace_path.read_text())
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    return None


def dataset_tokens(prefix: str | Path, need: int = 0) -> torch.Tensor:
    """Every token of an indexed dataset (`PREFIX.bin/.idx`), documents concatenated, as int64; exits with
    a message naming `make quickstart` when it is missing or holds fewer than `need` tokens."""
    import numpy as np

    from densa.data.indexed import IndexedDataset, data_paths

    if not all(p.exists() for p in data_paths(str(prefix))):
        raise SystemExit(f"{prefix} not found: run `make quickstart` first")
    ds = IndexedDataset(str(prefix))
    tokens = torch.from_numpy(np.concatenate([ds[i].astype(np.int64) for i in range(len(ds))]))
    if tokens.numel() < need:
        raise SystemExit(f"{prefix} has {tokens.numel()} tokens, {need} needed")
    return tokens


def machine_info() -> dict:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def time_interleaved(
    fns: dict[str, Callable[[], None]], repeats: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Run each function `repeats` times, alternating between them so drifts in machine load hit all alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def time_interleaved_cpu(
    fns: dict[str, Callable[[], object]],
    repeats: int,
    warmup: int = 1,
    cpu_clock: Callable[[], float] = time.process_time,
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """(wall, CPU) seconds per call, interleaved as `time_interleaved`. CPU time (`cpu_clock`: the
    process's, or `time.thread_time` when all work runs on one thread) leaves out the time other jobs on a
    shared machine hold the core, which wall time does not."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    wall: dict[str, list[float]] = {n: [] for n in fns}
    cpu: dict[str, list[float]] = {n: [] for n in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            c, w = cpu_clock(), time.perf_counter()
            fn()
            wall[name].append(time.perf_counter() - w)
            cpu[name].append(cpu_clock() - c)
    return wall, cpu


def median(values: list[float]) -> float:
    return statistics.median(values)


def write_results(name: str, payload: dict, markdown: str) -> tuple[Path, Path]:
    """Write benchmarks/results/NAME.json and NAME.md atomically."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    json_path, md_path = RESULTS_DIR / f"{name}.json", RESULTS_DIR / f"{name}.md"
    for path, text in ((json_path, json.dumps(payload, indent=2) + "\n"), (md_path, markdown)):
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    return json_path, md_path
