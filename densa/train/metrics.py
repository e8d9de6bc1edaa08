"""Metric sinks on rank 0: metrics.jsonl, TensorBoard events and a tqdm progress bar with ETA (stderr).

Throughput and MFU are computed by `Throughput`: MFU = 6·N·tokens/s / (peak FLOP/s × ranks), N the
non-embedding-inclusive parameter count (the usual 6N approximation: forward 2N + backward 4N per token,
attention FLOPs ignored). Peak FLOP/s per rank comes from `engine.peak_flops()`: $DENSA_PEAK_FLOPS if set,
else a small table of GPU bf16 peaks, else a CPU estimate of 1e11 FLOP/s per torch thread — on CPU the
figure is only good for comparing runs on the same machine.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any


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
    ) -> None:
        self.is_main = is_main
        self._jsonl = self._tb = self._bar = None
        if not is_main:
            return
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(run_dir / "metrics.jsonl", "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(run_dir / "tensorboard"))
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
        self._jsonl = self._tb = self._bar = None


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
