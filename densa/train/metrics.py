"""Metric sinks on rank 0: metrics.jsonl, TensorBoard events, optional Weights & Biases, and a tqdm progress
bar with ETA (stderr).

On resume at step S the sinks forget what the interrupted run logged after S (it is logged again):
metrics.jsonl loses its records with step > S (rewritten atomically), TensorBoard purges events from
step S + 1 (`SummaryWriter(purge_step=...)`), and W&B continues the same run (its id is kept in
RUN_DIR/wandb_run_id); W&B itself ignores steps at or below the last one it holds, and a resumed run
recomputes those steps exactly, so its curve has one point per step too.

Throughput and MFU are computed by `Throughput`: MFU = 6·N·tokens/s / (peak FLOP/s × ranks), N the
non-embedding-inclusive parameter count (the usual 6N approximation: forward 2N + backward 4N per token,
attention FLOPs ignored). Peak FLOP/s per rank comes from `engine.peak_flops()`: $DENSA_PEAK_FLOPS if set,
else a small table of GPU bf16 peaks, else a CPU estimate of 1e11 FLOP/s per torch thread — on CPU the
figure is only good for comparing runs on the same machine.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any

from densa.errors import DensaError

WANDB_MODES = ("online", "offline", "disabled")


def truncate_metrics(path: str | Path, last_step: int) -> int:
    """Drop the records of metrics.jsonl with step > `last_step` (and a torn last line), atomically;
    return how many were dropped."""
    path = Path(path)
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            step = json.loads(line).get("step")
        except (json.JSONDecodeError, AttributeError):
            dropped += 1  # a line cut short by a crash
            continue
        if isinstance(step, int) and step > last_step:
            dropped += 1
        else:
            kept.append(line)
    if dropped:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")
        os.replace(tmp, path)
    return dropped


def _wandb_run(run_dir: Path, wandb: Any, name: str, config: dict | None) -> Any:
    """wandb.init for this run dir: the same W&B run across resumes (id kept in RUN_DIR/wandb_run_id)."""
    try:
        import wandb as wandb_lib
    except ImportError:
        raise DensaError(
            "logging.wandb.project is set but wandb is not installed: pip install wandb"
            " (or remove logging.wandb.project)"
        ) from None
    id_file = run_dir / "wandb_run_id"
    run_id = id_file.read_text().strip() if id_file.is_file() else secrets.token_hex(4)
    id_file.write_text(run_id + "\n")
    kwargs: dict[str, Any] = dict(
        project=wandb.project,
        entity=wandb.entity,
        mode=wandb.mode,
        name=name,
        id=run_id,
        dir=str(run_dir),
        config=config,
        resume="allow",
    )
    return wandb_lib.init(**kwargs)


def _clean(metrics: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in metrics.items():
        if isinstance(v, bool) or v is None:
            out[k] = v
        elif isinstance(v, (int, float)):
            out[k] = v if isinstance(v, int) or math.isfinite(v) else str(v)
        else:
            out[k] = v
    return out


class MetricsLogger:
    """Writes records on the main rank only; every method is a no-op elsewhere."""

    def __init__(
        self,
        run_dir: str | Path,
        *,
        is_main: bool,
        tensorboard: bool = True,
        progress: bool = True,
        total_steps: int = 0,
        start_step: int = 0,
        resume_step: int | None = None,
        wandb: Any | None = None,
        run_name: str = "run",
        config: dict[str, Any] | None = None,
    ) -> None:
        """`resume_step`: the step of the checkpoint this run resumed from (None for a fresh run).
        `wandb`: a `WandbSection` whose project is set, or None; `config` is sent to W&B as the run config."""
        self.is_main = is_main
        self._jsonl = self._tb = self._bar = self._wandb = None
        if not is_main:
            return
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        if resume_step is not None:
            truncate_metrics(run_dir / "metrics.jsonl", resume_step)
        self._jsonl = open(run_dir / "metrics.jsonl", "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            purge = None if resume_step is None else resume_step + 1
            self._tb = SummaryWriter(str(run_dir / "tensorboard"), purge_step=purge)
        if wandb is not None and wandb.project:
            self._wandb = _wandb_run(run_dir, wandb, run_name, config)
        if progress:
            from tqdm import tqdm

            self._bar = tqdm(
                total=total_steps, initial=start_step, file=sys.stderr, unit="step", dynamic_ncols=True
            )

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        """One record: a metrics.jsonl line and a TensorBoard scalar per numeric metric."""
        if not self.is_main:
            return
        record = {"step": step, "time": time.time(), **_clean(metrics)}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for key, value in metrics.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                    self._tb.add_scalar(key, value, step)
            self._tb.flush()
        if self._wandb is not None:
            numbers = {
                k: v
                for k, v in metrics.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            }
            self._wandb.log(numbers, step=step)

    def progress(self, step: int, loss: float | None = None) -> None:
        """Advance the bar to `step` steps done."""
        if self._bar is None:
            return
        self._bar.update(step - self._bar.n)
        if loss is not None:
            self._bar.set_postfix(loss=f"{loss:.4f}", refresh=False)

    def message(self, text: str) -> None:
        if not self.is_main:
            return
        if self._bar is not None:
            self._bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        for sink in (self._bar, self._tb, self._jsonl):
            if sink is not None:
                sink.close()
        if self._wandb is not None:
            self._wandb.finish()
        self._jsonl = self._tb = self._bar = self._wandb = None


class Throughput:
    """Tokens/s and MFU over the steps since the last `measure()`."""

    def __init__(
        self, num_params: int, tokens_per_step: int, peak_flops_per_rank: float, world_size: int
    ) -> None:
        self.num_params, self.tokens_per_step = num_params, tokens_per_step
        self.peak = peak_flops_per_rank * world_size
        self._t0, self._steps = time.perf_counter(), 0

    def add_step(self) -> None:
        self._steps += 1

    def measure(self) -> dict[str, float]:
        elapsed = time.perf_counter() - self._t0
        if self._steps == 0 or elapsed <= 0:
            return {}
        tps = self._steps * self.tokens_per_step / elapsed
        out = {
            "perf/tokens_per_s": tps,
            "perf/step_s": elapsed / self._steps,
            "perf/mfu": 6 * self.num_params * tps / self.peak,
        }
        self._t0, self._steps = time.perf_counter(), 0
        return out
