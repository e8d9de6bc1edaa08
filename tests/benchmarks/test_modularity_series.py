"""benchmarks/modularity: the validation-loss summary of a series member (losses.py), which checkpoints the
emergence stage analyses (run.analysed) and the labels of the series findings (report.series_findings)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from benchmarks.modularity.losses import loss_at, loss_markdown, loss_summary, quarter_drops, val_curve
from benchmarks.modularity.report import interval, series_findings
from benchmarks.modularity.run import analysed


def _metrics(path: Path, evals: dict[int, float], tokens: int = 65536) -> Path:
    rows = [{"step": s, "train/loss": 9.0} for s in (20, 40)]
    rows += [{"step": s, "val/loss": v, "val/tokens": tokens} for s, v in evals.items()]
    path.write_text("".join(json.dumps(r) + "\n" for r in reversed(rows)))
    return path


def test_val_curve_reads_the_evaluations_in_step_order(tmp_path: Path) -> None:
    curve, tokens = val_curve(_metrics(tmp_path / "metrics.jsonl", {64: 6.0, 128: 5.5, 256: 5.0}))
    assert curve == [(64, 6.0), (128, 5.5), (256, 5.0)]
    assert tokens == 65536


def test_quarter_drops_are_the_interpolated_loss_drop_per_100_steps() -> None:
    curve = [(32, 7.0), (64, 6.0), (128, 5.0), (192, 4.8), (256, 4.0)]
    drops = quarter_drops(curve, 256)
    # Q1 from step 32 (first evaluation) to 64: 1.0 nat over 32 steps
    assert drops[0] == pytest.approx(100 * 1.0 / 32)
    assert drops[1] == pytest.approx(100 * 1.0 / 64)
    assert drops[2] == pytest.approx(100 * 0.2 / 64)
    assert drops[3] == pytest.approx(100 * 0.8 / 64)
    # between evaluations: linear interpolation; outside: clamped
    assert loss_at(curve, 160) == pytest.approx(4.9)
    assert loss_at(curve, 0) == 7.0 and loss_at(curve, 999) == 4.0


def test_quarters_without_an_evaluation_to_start_from_have_no_value() -> None:
    # the 256-step series evaluated at 100, 200 and 256: nothing before step 64 or 128
    drops = quarter_drops([(100, 6.4), (200, 6.2), (256, 6.1)], 256)
    assert drops[0] is None and drops[1] is None
    # Q3 = steps 128..192, interpolated between the evaluations at 100 and 200: 6.344 → 6.216
    assert drops[2] == pytest.approx(100 * (6.344 - 6.216) / 64)
    summary = loss_summary({"dense-s0": [(100, 6.4), (200, 6.2), (256, 6.1)]}, 256)
    assert summary["runs"]["dense-s0"]["q3_over_q1"] is None and summary["q3_over_q1_mean"] is None


def test_loss_summary_means_the_curves_at_shared_steps_and_the_plateau_ratio() -> None:
    a = [(64, 6.0), (128, 5.0), (192, 4.9), (256, 4.5)]
    b = [(64, 5.0), (128, 4.6), (192, 4.5), (256, 4.1), (300, 4.0)]
    s = loss_summary({"dense-s1": b, "dense-s0": a}, 256, 65536)
    assert list(s["runs"]) == ["dense-s0", "dense-s1"]
    assert s["mean_curve"] == [(64, 5.5), (128, 4.8), (192, pytest.approx(4.7)), (256, 4.3)]
    # the first evaluation at step 64 = steps/4 leaves the first quarter empty
    assert s["runs"]["dense-s0"]["drops_per_100"][0] is None
    c = [(16, 8.0), (64, 6.0), (128, 5.0), (192, 4.9), (256, 4.5)]
    r = loss_summary({"ssd-s0": c}, 256)["runs"]["ssd-s0"]
    assert r["q3_over_q1"] == pytest.approx((0.1 / 64) / (2.0 / 48))
    assert r["final"] == 4.5
    md = loss_markdown({"ssd": loss_summary({"ssd-s0": c}, 256, 65536)})
    assert "| ssd-s0 | 4.167 | 1.562 | 0.156 | 0.625 | 0.04 | 4.500 |" in md
    assert md[0].startswith("Validation loss (65536 held-out tokens per evaluation)")


def test_analysed_checkpoints_stay_on_the_interval_grid_counted_from_the_last_step() -> None:
    steps = [32 * i for i in range(1, 33)]
    ckpts = [SimpleNamespace(step=s) for s in sorted([*steps, 216])]  # 216: saved on SIGTERM
    assert [c.step for c in analysed(ckpts, 32, 2, 1024)] == [64 * i for i in range(1, 17)]
    assert [c.step for c in analysed(ckpts, 32, 4, 1024)] == [128 * i for i in range(1, 9)]
    assert [c.step for c in analysed(ckpts, 32, 1, 1024)] == steps
    # while training runs (checkpoints up to 288): the same steps as the finished run will have
    running = [c for c in ckpts if c.step <= 288]
    assert [c.step for c in analysed(running, 32, 2, 1024)] == [64, 128, 192, 256]


def _seed(stab: dict, half: dict) -> dict:
    return {
        "seed": 0,
        "stabilised": stab,
        "half_rise": half,
        "experts_before_neurons": False,
        "partition_before_best_function": False,
    }


def test_series_findings_are_labelled_by_the_series_length() -> None:
    keys = ("param_ari", "neuron_spearman", "expert_spearman", "random_expert_spearman", "best_function_ari")
    seeds = {
        "dense-s0": _seed({k: 512 for k in keys}, {k: 300.0 for k in keys}),
        "dense-s1": _seed({k: 512 for k in keys}, {k: 310.0 for k in keys}),
    }
    seeds["dense-s0"]["half_rise"]["expert_spearman"] = 100.0
    seeds["dense-s1"]["half_rise"]["expert_spearman"] = 120.0
    srows = {
        "dense": {
            "seeds": seeds,
            "stabilised": {k: interval([512, 512]) for k in keys},
            "steps": [64, 128],
        }
    }
    found = series_findings(srows, 1024)
    names = [f[0] for f in found]
    assert names[0] == "expert-level function stabilises before single neurons' (dense, 2 seeds, 1024 steps)"
    half = next(f for f in found if f[0] == "... by half-rise step (dense, 2 seeds, 1024 steps)")
    # every seed's expert half-rise (100, 120) precedes every neuron and random-expert one (300, 310)
    assert half[2] is True
    assert "at step 100, 120, neurons at 300, 310" in half[1]
