"""Learning-rate schedules as multipliers of the peak LR (for `torch.optim.lr_scheduler.LambdaLR`).

Step `s` is the 0-based index of the optimizer step the multiplier applies to. A phase of `n` steps
gives its `i`-th step (i = 1..n) the progress `i / n`, so warmup reaches the peak on its last step
(no update is wasted at LR 0) and decay reaches `min_lr_ratio` exactly on the run's last step,
`total_steps - 1`. Steps past the end keep the final value.

- constant: warmup, then the peak.
- linear / cosine: warmup, then decay over all remaining steps to `min_lr_ratio`.
- wsd (warmup-stable-decay, MiniCPM): warmup, the peak until the last `decay_length` steps, then a
  decay of shape linear, cosine, exp (geometric: `min_lr_ratio ** p`, MiniCPM's exponential decay
  parametrised by its end point) or 1-sqrt (`1 - sqrt(p)`, Hägele et al. 2024).
"""

from __future__ import annotations

import math
from collections.abc import Callable

from densa.config.schema import ScheduleSection


def _decay(progress: float, shape: str, floor: float) -> float:
    p = min(max(progress, 0.0), 1.0)
    if shape == "linear":
        return 1.0 - (1.0 - floor) * p
    if shape == "cosine":
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * p))
    if shape == "exp":
        return floor**p
    if shape == "1-sqrt":
        return floor + (1.0 - floor) * (1.0 - math.sqrt(p))
    raise ValueError(f"unknown decay shape {shape!r} (linear, cosine, exp or 1-sqrt)")


def lr_multiplier(step: int, schedule: ScheduleSection, total_steps: int) -> float:
    """Multiplier of the peak LR for 0-based optimizer step `step` of a `total_steps` run."""
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    warmup = schedule.warmup_steps
    if step < warmup:
        return (step + 1) / warmup
    kind, floor = schedule.kind, schedule.min_lr_ratio
    if kind == "constant":
        return 1.0
    if kind in ("linear", "cosine"):
        span = total_steps - warmup
        return _decay((step - warmup + 1) / span if span > 0 else 1.0, kind, floor)
    if kind == "wsd":
        decay = min(schedule.decay_length(total_steps), total_steps - warmup)
        start = total_steps - decay  # first decay step
        if step < start or decay <= 0:
            return 1.0
        return _decay((step - start + 1) / decay, schedule.decay_shape, floor)
    raise ValueError(f"unknown schedule kind {kind!r} (constant, linear, cosine or wsd)")


def build_lr_lambda(schedule: ScheduleSection, total_steps: int) -> Callable[[int], float]:
    """`lr_multiplier` bound to a schedule, for `LambdaLR(optimizer, build_lr_lambda(...))`."""
    if schedule.kind not in ("constant", "linear", "cosine", "wsd"):
        raise ValueError(f"unknown schedule kind {schedule.kind!r} (constant, linear, cosine or wsd)")
    return lambda step: lr_multiplier(step, schedule, total_steps)
