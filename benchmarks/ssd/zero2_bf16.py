"""SSD under DeepSpeed ZeRO-2 on 2 processes, from recipes/ssd_zero2_bf16.yaml: bf16 next to fp32.

Claim under test (issue 19, item 1): SSD trains under ZeRO-2 in bf16 from a recipe. Its loss stays
finite and falls through the dense -> sparse -> dense switches, and it tracks the same recipe run in fp32
(`--set parallel.precision=fp32`). The two runs go one after the other through `densa launch --nproc 2`,
as docs/ssd.md documents. Reported: the train loss of both runs at every logged step, the mode
(ssd/sparse), the expert load CV in sparse phases, the validation loss at the eval steps, and each run's
wall time (one shared machine, runs not interleaved: not a speed comparison).

    python benchmarks/ssd/zero2_bf16.py [--out runs/ssd-zero2-bench] [--steps 100]

The quickstart data (runs/quickstart/) is built first if absent, as `densa quickstart` would build it.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import ensure_quickstart_data, machine_info, write_results  # noqa: E402
from densa.config.load import load_recipe  # noqa: E402

NAME = "ssd_zero2_bf16"
RECIPE = "recipes/ssd_zero2_bf16.yaml"
PRECISIONS = ("bf16", "fp32")


def run(precision: str, out: Path, steps: int) -> dict:
    """One `densa launch --nproc 2` of the recipe; its metrics.jsonl rows and wall time."""
    run_dir = out / precision
    shutil.rmtree(run_dir, ignore_errors=True)
    sets = [f"parallel.precision={precision}", f"run.out_dir={run_dir}", f"train.steps={steps}"]
    cmd = [sys.executable, "-m", "densa", "launch", RECIPE, "--nproc", "2"]
    cmd += [arg for s in sets for arg in ("--set", s)]
    start = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {"rows": rows, "wall_s": wall}


def summary(rows: list[dict]) -> dict:
    train = [r for r in rows if "train/loss" in r]
    return {
        "steps": [r["step"] for r in train],
        "loss": [r["train/loss"] for r in train],
        "sparse": [r.get("ssd/sparse") for r in train],
        "load_cv": [r.get("ssd/load_cv") for r in train],
        "sparse_step_fraction": train[-1].get("ssd/sparse_step_fraction"),
        "val": {r["step"]: r["val/loss"] for r in rows if "val/loss" in r},
    }


def markdown(result: dict) -> str:
    b, f = (result["runs"][p] for p in PRECISIONS)
    lines = [
        f"# SSD under ZeRO-2 on 2 processes: bf16 vs fp32 ({RECIPE})",
        "",
        f"Written by `benchmarks/ssd/zero2_bf16.py`. {result['setup']['steps']} steps; wall time bf16"
        f" {b['wall_s']:.0f} s, fp32 {f['wall_s']:.0f} s (shared machine, not interleaved: not a speed"
        " comparison).",
        "",
        "| step | mode after the step | loss bf16 | loss fp32 | bf16 / fp32 | load CV bf16 (sparse steps) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for i, step in enumerate(b["steps"]):
        mode = "sparse" if b["sparse"][i] else "dense"
        cv = b["load_cv"][i]
        lines.append(
            f"| {step} | {mode} | {b['loss'][i]:.4f} | {f['loss'][i]:.4f} | {b['loss'][i] / f['loss'][i]:.4f}"
            f" | {'' if cv is None else f'{cv:.3f}'} |"
        )
    lines += ["", "| validation at step | loss bf16 | loss fp32 |", "| --- | --- | --- |"]
    for step, loss in b["val"].items():
        lines.append(f"| {step} | {loss:.4f} | {f['val'][step]:.4f} |")
    checks = result["checks"]
    lines += [
        "",
        f"Sparse-step fraction: bf16 {b['sparse_step_fraction']:.2f}, fp32 {f['sparse_step_fraction']:.2f}.",
        f"bf16 loss finite at every step: {checks['bf16_finite']}; falls from first to last logged step:"
        f" {checks['bf16_falls']}; largest |bf16 / fp32 - 1| over logged steps:"
        f" {checks['max_rel_diff']:.4f}.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/ssd-zero2-bench", help="folder for the two run dirs")
    parser.add_argument("--steps", type=int, default=100, help="train.steps of both runs")
    args = parser.parse_args()
    ensure_quickstart_data(load_recipe(ROOT / RECIPE, check=False))
    out = Path(args.out).resolve()
    runs = {}
    for precision in PRECISIONS:
        done = run(precision, out, args.steps)
        runs[precision] = {**summary(done["rows"]), "wall_s": done["wall_s"]}
    b, f = runs["bf16"], runs["fp32"]
    checks = {
        "bf16_finite": all(math.isfinite(x) for x in b["loss"]),
        "bf16_falls": b["loss"][-1] < b["loss"][0],
        "max_rel_diff": max(abs(x / y - 1) for x, y in zip(b["loss"], f["loss"], strict=True)),
        "same_modes": b["sparse"] == f["sparse"],
    }
    result = {
        "setup": {"recipe": RECIPE, "nproc": 2, "steps": args.steps, "launcher": "densa launch --nproc 2"},
        "machine": machine_info(),
        "runs": runs,
        "checks": checks,
    }
    json_path, md_path = write_results(NAME, result, markdown(result))
    print(f"wrote {json_path} and {md_path}")


if __name__ == "__main__":
    main()
