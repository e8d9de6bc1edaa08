"""lm-evaluation-harness vs densa's scorer on the density task files, for one exported reference model.

Exports a reference run with `densa export`, runs `lm_eval.simple_evaluate` (model hf, add_bos_token=False:
densa pretrains without BOS) on every density task, and compares each request's log-likelihood and each
task's accuracy with `densa.density.scoring` on the same requests. Needs `pip install -e .[eval]`.

    python benchmarks/densing/lmeval_check.py [--run runs/density/reference/ref_s1_D1638k]

Writes benchmarks/results/densing_lmeval.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import machine_info, write_results  # noqa: E402

TASKS = "runs/density/data/material/tasks"


def _pairs(arguments: object) -> list:
    """(context, continuation) per request: tuples in memory, {gen_args_i: {arg_0, arg_1}} on disk."""
    if isinstance(arguments, dict):
        return [(a["arg_0"], a["arg_1"]) for a in arguments.values()]
    return [tuple(a[:2]) for a in arguments]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/density/reference/ref_s1_D1638k")
    parser.add_argument("--out", default=None, help="HF export (default: runs/density/lmeval_hf/RUN_NAME)")
    args = parser.parse_args()
    args.out = args.out or str(Path("runs/density/lmeval_hf") / Path(args.run).name)  # one export per run
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    if not Path(args.out).exists():
        subprocess.run([sys.executable, "-m", "densa", "export", args.run, "--out", args.out], check=True)
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from densa.data.tokenizer import load_tokenizer
    from densa.density import load_suite, loglikelihoods, score_suite
    from densa.train.finetune import load_model

    tasks = load_suite(TASKS)
    hf = str(Path(args.out).absolute())
    cwd = os.getcwd()
    os.chdir(TASKS)  # lm-eval resolves data_files against the working directory
    started = time.perf_counter()
    try:
        res = simple_evaluate(
            model="hf",
            model_args=f"pretrained={hf},dtype=float32,add_bos_token=False",
            tasks=[t.name for t in tasks],
            task_manager=TaskManager(include_path="."),
            device="cpu",
            batch_size=16,
            log_samples=True,
        )
    finally:
        os.chdir(cwd)
    lm_eval_s = time.perf_counter() - started
    model, tok = load_model(hf), load_tokenizer(hf)
    started = time.perf_counter()
    ours = score_suite(model, tok.encode, tasks)
    densa_s = time.perf_counter() - started
    rows, worst = [], 0.0
    for t in tasks:
        samples = res["samples"][t.name]
        reqs = [tuple(a) for s in samples for a in _pairs(s["arguments"])]
        theirs = [float(r[0][0]) for s in samples for r in s["resps"]]  # per request: [[loglik, greedy]]
        mine = [r.logprob for r in loglikelihoods(model, tok.encode, reqs)]
        delta = max(abs(a - b) for a, b in zip(theirs, mine))
        worst = max(worst, delta)
        acc = res["results"][t.name].get("acc,none")
        rows.append(
            {"task": t.name, "requests": len(reqs), "max_abs_dloglik": delta, "lm_eval_acc": acc,
             "densa": ours.tasks[t.name], "same_requests": sorted(reqs) == sorted(
                 r for d in t.docs for r in t.requests(d))}
        )  # fmt: skip
    payload = {
        "config": {"run": args.run, "lm_eval_model_args": "dtype=float32,add_bos_token=False"},
        "machine": machine_info(),
        "tasks": rows,
        "max_abs_dloglik": worst,
        "seconds": {"lm_eval": lm_eval_s, "densa": densa_s},
    }
    md = [
        "# lm-eval vs densa.density.scoring (`benchmarks/densing/lmeval_check.py`)",
        "",
        f"Model: {args.run} exported with `densa export`; lm-eval hf, add_bos_token=False.",
        "",
        "| task | requests | same requests | max abs Δ loglik | lm-eval acc | densa (loss or acc) |",
        "| --- | ---: | --- | ---: | ---: | ---: |",
        *[
            f"| {r['task']} | {r['requests']} | {r['same_requests']} | {r['max_abs_dloglik']:.2e} | "
            f"{r['lm_eval_acc']:.4f} | {r['densa']:.4f} |"
            for r in rows
        ],
        "",
        f"Wall time: lm-eval {lm_eval_s:.0f} s, densa {densa_s:.0f} s.",
        "",
    ]
    write_results("densing_lmeval", payload, "\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
