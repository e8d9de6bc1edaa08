"""LR schedules against closed forms at chosen steps, plus continuity and monotonicity."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

from densa.config.schema import ScheduleSection
from densa.train.schedules import build_lr_lambda, lr_multiplier

TOTAL = 100


def curve(schedule: ScheduleSection, total: int = TOTAL) -> list[float]:
    return [lr_multiplier(s, schedule, total) for s in range(total)]


def test_warmup_is_linear_and_reaches_peak_on_its_last_step() -> None:
    sched = ScheduleSection(kind="constant", warmup_steps=10)
    assert lr_multiplier(0, sched, TOTAL) == pytest.approx(0.1)
    assert lr_multiplier(4, sched, TOTAL) == pytest.approx(0.5)
    assert lr_multiplier(9, sched, TOTAL) == 1.0
    assert curve(sched)[10:] == [1.0] * 90


def test_cosine_closed_form() -> None:
    sched = ScheduleSection(kind="cosine", warmup_steps=10, min_lr_ratio=0.1)
    for step in (10, 30, 54, 77, 99):
        p = (step - 10 + 1) / 90
        assert lr_multiplier(step, sched, TOTAL) == pytest.approx(
            0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p))
        )
    assert lr_multiplier(54, sched, TOTAL) == pytest.approx(0.55)  # half way: p = 45/90
    assert lr_multiplier(99, sched, TOTAL) == pytest.approx(0.1)
    assert lr_multiplier(500, sched, TOTAL) == pytest.approx(0.1)  # past the end: the floor


def test_linear_closed_form_without_warmup() -> None:
    sched = ScheduleSection(kind="linear", min_lr_ratio=0.0)
    assert lr_multiplier(0, sched, TOTAL) == pytest.approx(0.99)
    assert lr_multiplier(49, sched, TOTAL) == pytest.approx(0.5)
    assert lr_multiplier(99, sched, TOTAL) == 0.0


@pytest.mark.parametrize(
    ("shape", "expected"),
    [
        ("linear", lambda p, m: 1 - (1 - m) * p),
        ("cosine", lambda p, m: m + (1 - m) * 0.5 * (1 + math.cos(math.pi * p))),
        ("exp", lambda p, m: m**p),
        ("1-sqrt", lambda p, m: m + (1 - m) * (1 - math.sqrt(p))),
    ],
)
def test_wsd_shapes(shape: str, expected: Callable[[float, float], float]) -> None:
    sched = ScheduleSection(
        kind="wsd", warmup_steps=10, decay_fraction=0.2, decay_shape=shape, min_lr_ratio=0.05
    )
    values = curve(sched)
    assert values[9] == 1.0 and values[10:80] == [1.0] * 70  # stable phase at the peak
    for step in (80, 85, 90, 99):
        p = (step - 80 + 1) / 20
        assert values[step] == pytest.approx(expected(p, 0.05))
    assert values[99] == pytest.approx(0.05)
    assert values[80] < 1.0  # every decay step is below the peak
    assert all(a >= b for a, b in zip(values[10:], values[11:], strict=False))  # monotone after warmup


def test_wsd_decay_steps_override_fraction() -> None:
    sched = ScheduleSection(
        kind="wsd", decay_steps=5, decay_fraction=0.5, decay_shape="linear", min_lr_ratio=0.0
    )
    values = curve(sched, 20)
    assert values[:15] == [1.0] * 15
    assert values[15:] == pytest.approx([0.8, 0.6, 0.4, 0.2, 0.0])


@pytest.mark.parametrize("kind", ["constant", "linear", "cosine", "wsd"])
def test_continuity(kind: str) -> None:
    # No jump larger than one warmup increment or one decay increment of the steepest shape.
    sched = ScheduleSection(
        kind=kind, warmup_steps=20, decay_fraction=0.3, decay_shape="cosine", min_lr_ratio=0.1
    )
    values = curve(sched, 1000)
    assert max(abs(a - b) for a, b in zip(values, values[1:], strict=False)) <= 0.05 + 1e-12
    assert all(0.0 < v <= 1.0 for v in values)


def test_lambda_lr_drives_optimizer() -> None:
    sched = ScheduleSection(kind="wsd", warmup_steps=2, decay_steps=2, decay_shape="linear", min_lr_ratio=0.5)
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=2.0)
    lr_sched = torch.optim.lr_scheduler.LambdaLR(opt, build_lr_lambda(sched, 6))
    seen = []
    for _ in range(6):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        lr_sched.step()
    assert seen == pytest.approx([1.0, 2.0, 2.0, 2.0, 1.5, 1.0])


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="step must be >= 0"):
        lr_multiplier(-1, ScheduleSection(), TOTAL)
    with pytest.raises(ValueError, match="unknown schedule kind 'step'"):
        build_lr_lambda(ScheduleSection(kind="step"), TOTAL)
