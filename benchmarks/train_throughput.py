"""Training throughput: `densa train` vs a bare PyTorch loop, and 1 vs 2 processes (ZeRO-1).

Same model (recipes/quickstart.yaml, ~11M parameters), same data (the quickstart's Shakespeare
.bin/.idx through densa's sampler), same global batch (4096 tokens). Every run is its own process
so each pays its own start-up, and only steady-state steps count (the first `--skip` are dropped).

  densa     `python -m densa.train` (DeepSpeed engine, callbacks, metrics, checkpoint at the end);
            step time read back from metrics.jsonl (`perf/step_s`, logged every step)
  bare      the same model, AdamW, LambdaLR, clipping and gradient accumulation in a plain loop
  densa_2p  `densa launch --nproc 2` with ZeRO-1: dp 2 × micro-batch 8, one thread per process

    python -m benchmarks.train_throughput [--steps 14] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.common import machine_info, write_results

RECIPE = "recipes/quickstart.yaml"
COMMON = ["logging.progress=false", "logging.tensorboard=false", "logging.log_interval=1", "eval.interval=0"]


def _overrides(out_dir: Path, steps: int, extra: list[str] = ()) -> list[str]:
    sets = [f"run.out_dir={out_dir}", f"train.steps={steps}", "schedule.warmup_steps=2", *COMMON, *extra]
    sets += [f"checkpoint.interval={steps}", "checkpoint.resume=none", "export.hf_dir=null"]
    return [arg for s in sets for arg in ("--set", s)]


def _step_times(run_dir: Path, skip: int) -> list[float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    times = [r["perf/step_s"] for r in records if "perf/step_s" in r]
    return times[skip:]


def run_densa(work: Path, steps: int, skip: int, nproc: int = 1) -> list[float]:
    out = Path(tempfile.mkdtemp(dir=work, prefix=f"densa{nproc}p-"))
    env = dict(os.environ)
    if nproc == 1:
        cmd = [sys.executable, "-m", "densa.train", RECIPE, *_overrides(out, steps)]
    else:
        env["OMP_NUM_THREADS"] = "1"
        extra = ["parallel.zero_stage=1"]
        cmd = [sys.executable, "-m", "densa.launch.cli", "launch", RECIPE, "--nproc", str(nproc)]
        cmd += _overrides(out, steps, extra)
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return _step_times(out, skip)


def run_bare(steps: int, skip: int) -> list[float]:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.train_throughput_bare", RECIPE, str(steps), str(skip)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=14)
    parser.add_argument("--skip", type=int, default=4, help="warm-up steps left out of the median")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    from densa.config.checks import derived_batch
    from densa.config.load import load_recipe

    cfg = load_recipe(RECIPE)
    tokens = cfg.batch.global_tokens
    if not Path(cfg.data.train[0].path + ".bin").exists():
        raise SystemExit("quickstart data missing: run `densa quickstart` (or `make quickstart`) first")
    work = Path(tempfile.mkdtemp(prefix="densa-train-bench-"))
    times: dict[str, list[float]] = {"densa": [], "bare": [], "densa_2p_zero1": []}
    for _ in range(args.rounds):  # alternate so drifts in machine load hit every variant alike
        times["densa"] += run_densa(work, args.steps, args.skip)
        times["bare"] += run_bare(args.steps, args.skip)
        times["densa_2p_zero1"] += run_densa(work, args.steps, args.skip, nproc=2)
    rows = {}
    for name, ts in times.items():
        step = statistics.median(ts)
        rows[name] = {"median_step_s": step, "tokens_per_s": tokens / step, "step_times_s": ts}
    ratio_loop = rows["densa"]["tokens_per_s"] / rows["bare"]["tokens_per_s"]
    ratio_2p = rows["densa_2p_zero1"]["tokens_per_s"] / rows["densa"]["tokens_per_s"]
    batch = derived_batch(cfg, 1)
    lines = [
        "# Training throughput: densa train vs a bare PyTorch loop; 1 vs 2 processes",
        "",
        f"{RECIPE}: {cfg.model.num_params() / 1e6:.1f}M parameters, {tokens} tokens/step "
        f"(1 process: grad_accum {batch.grad_accum} × micro-batch {batch.micro_batch}; 2 processes: dp 2 × "
        f"micro-batch {batch.micro_batch}), fp32 on CPU; median step time over {args.rounds} alternating "
        f"rounds of {args.steps} steps (first {args.skip} dropped).",
        "",
        "| variant | median step (s) | tokens/s |",
        "| --- | --- | --- |",
        *(f"| {n} | {r['median_step_s']:.3f} | {r['tokens_per_s']:,.0f} |" for n, r in rows.items()),
        "",
        f"- densa / bare loop: **{ratio_loop:.3f}** (goal ≥ 0.97)",
        f"- 2 processes (ZeRO-1, 1 thread each) / 1 process (2 threads): **{ratio_2p:.3f}**",
    ]
    payload = {
        "benchmark": "train_throughput",
        "machine": machine_info(),
        "args": vars(args),
        "recipe": RECIPE,
        "results": rows,
        "densa_over_bare": ratio_loop,
        "two_process_over_one": ratio_2p,
    }
    write_results("train_throughput", payload, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
