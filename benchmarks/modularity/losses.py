"""Validation loss over a series member's training: has it flattened by the end?

The emergence findings compare when curves settle relative to the final checkpoint, which means little when
the final model is still far from trained. Per run, the validation loss at every evaluation (metrics.jsonl)
and its drop per 100 steps in each quarter of training: a flattening curve drops much less in its later
quarters than in its first. WSD's decay phase (the last 25% of steps, recipes/quickstart.yaml) lowers the
loss again at the end, so the third quarter, the end of the constant-LR phase, is the plateau to read.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

QUARTERS = 4


def val_curve(metrics: Path) -> tuple[list[tuple[int, float]], int | None]:
    """(step, val/loss) of every evaluation in a run's metrics.jsonl, in step order, and the tokens one
    evaluation reads (None when not logged)."""
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    curve = sorted((int(r["step"]), float(r["val/loss"])) for r in rows if "val/loss" in r)
    tokens = next((int(r["val/tokens"]) for r in rows if "val/tokens" in r), None)
    return curve, tokens


def loss_at(curve: list[tuple[int, float]], step: float) -> float:
    """The loss at `step`, linearly interpolated between evaluations (clamped to the first and last)."""
    if step <= curve[0][0]:
        return curve[0][1]
    for (s0, l0), (s1, l1) in zip(curve, curve[1:]):
        if step <= s1:
            return l0 + (step - s0) / (s1 - s0) * (l1 - l0)
    return curve[-1][1]


def quarter_drops(curve: list[tuple[int, float]], steps: int) -> list[float | None]:
    """Loss drop per 100 steps over each quarter of `steps`. The first quarter starts at the first
    evaluation; a quarter with no evaluation at or before its start (the first: none before its end) has
    no value."""
    first = curve[0][0]
    out: list[float | None] = []
    for q in range(QUARTERS):
        a, b = steps * q / QUARTERS, steps * (q + 1) / QUARTERS
        if q == 0:
            a = first
        if a >= b or a < first:
            out.append(None)
            continue
        out.append(100 * (loss_at(curve, a) - loss_at(curve, b)) / (b - a))
    return out


def loss_summary(curves: dict[str, list[tuple[int, float]]], steps: int, tokens: int | None = None) -> dict:
    """Per run: final loss and quarter drops; over runs: the mean curve at the shared evaluation steps and
    the mean ratio of the third quarter's drop rate to the first's (near 0: flat before the decay)."""
    runs = {}
    for tag, curve in sorted(curves.items()):
        drops = quarter_drops(curve, steps)
        ok = drops[0] is not None and drops[2] is not None and drops[0] > 0
        runs[tag] = {
            "final": curve[-1][1],
            "drops_per_100": drops,
            "q3_over_q1": drops[2] / drops[0] if ok else None,
        }
    shared = sorted(set.intersection(*(set(s for s, _ in c) for c in curves.values()))) if curves else []
    mean = [(s, statistics.fmean(dict(c)[s] for c in curves.values())) for s in shared]
    ratios = [r["q3_over_q1"] for r in runs.values() if r["q3_over_q1"] is not None]
    return {
        "steps": steps,
        "val_tokens": tokens,
        "runs": runs,
        "mean_curve": mean,
        "q3_over_q1_mean": statistics.fmean(ratios) if ratios else None,
    }


def loss_markdown(by_kind: dict[str, dict]) -> list[str]:
    """Tables: each run's drop rate per quarter, and each kind's mean validation curve."""
    tokens = sorted({str(s["val_tokens"]) for s in by_kind.values()})
    out = [
        f"Validation loss ({' / '.join(tokens)} held-out tokens per evaluation) over training: drop per "
        "100 steps in each quarter of the steps (–: no evaluation to start it from); the last quarter is "
        "WSD's LR decay, so the third quarter (constant LR) is the plateau to read:",
        "",
        "| run | Q1 | Q2 | Q3 | Q4 (decay) | Q3 ÷ Q1 | final |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for summ in by_kind.values():
        for tag, r in summ["runs"].items():
            d = ["–" if x is None else f"{x:.3f}" for x in r["drops_per_100"]]
            ratio = "–" if r["q3_over_q1"] is None else f"{r['q3_over_q1']:.2f}"
            out.append(f"| {tag} | {' | '.join(d)} | {ratio} | {r['final']:.3f} |")
    kinds = list(by_kind)
    steps = sorted(set.intersection(*(set(s for s, _ in by_kind[k]["mean_curve"]) for k in kinds)))
    out += [
        "",
        "| step | " + " | ".join(f"{k} valid loss (mean over seeds)" for k in kinds) + " |",
        "| --- |" + " --- |" * len(kinds),
    ]
    for s in steps:
        out.append(f"| {s} | " + " | ".join(f"{dict(by_kind[k]['mean_curve'])[s]:.3f}" for k in kinds) + " |")
    return out
