"""Locret experiment A (reference/longctx.md §7.2): answer accuracy vs KV budget for each policy.

1. Backbone: `densa` trainer on `recipes/locret_backbone_tiny.yaml` with `task_data.TaskCurriculum`
   (copy warm-up, then MQAR + passkey + first-occurrence at T = 64 → 128 → 256); in-distribution
   accuracy of each task at T = 256 (MQAR: 8 pairs, 4 queries).
2. Retaining heads: `densa` trainer on `recipes/locret_heads_tiny.yaml` (`retaining_heads:` section,
   backbone loaded from step 1's run dir and frozen, CIS loss on `--task` samples).
3. For each budget (4–16× compression of the 248-token context) and policy, at equal budget and chunk
   (16): chunked prefill of the context (query-agnostic), the query segment as the tail, teacher-forced
   answer accuracy, peak KV entries held, peak KV-cache bytes, share of needle tokens retained; plus the
   §7.2 Locret ablations (no stabilizers, compacted positions).

Writes benchmarks/results/locret.{json,md,png}. Run dirs go to runs/locret_bench/ (gitignored).
`--quick` is a smoke run (its numbers mean nothing); `--reuse` skips training stages already complete.
The committed results are the defaults with OMP_NUM_THREADS=1.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import RESULTS_DIR, machine_info, write_results
from benchmarks.locret.task_data import CurriculumCallback, TaskCurriculum, TaskHeads, eval_sample
from densa.config.load import load_recipe
from densa.config.schema import RunConfig
from densa.longctx import build_policy, generate_with_policy
from densa.longctx.tasks import TaskSample, TaskVocab, answer_accuracy
from densa.models import Transformer
from densa.retaining_heads import heads_loss, load_heads
from densa.train.finetune import init_from
from densa.train.run import build_trainer

POLICIES = ["full", "streaming_llm", "h2o", "snapkv", "random", "locret"]
# reference/longctx.md §7.2 ablations: (policy, options, compact_positions); not counted as baselines.
ABLATIONS: dict[str, tuple[str, dict[str, Any], bool]] = {
    "locret_no_stabilizers": ("locret", {"n_stabilizers": 0}, False),
    "locret_compact_positions": ("locret", {}, True),
}
RECIPES = Path(__file__).resolve().parents[2] / "recipes"
TASKS = ["mqar", "passkey", "first_occurrence"]


def run_stage(
    cfg: RunConfig, train_data: Any, reuse: bool, callbacks: list[Any] | None = None
) -> dict[str, Any]:
    """Train `cfg` on `train_data` in a fresh run dir (or reuse a finished one); the logged records."""
    out = Path(cfg.run.out_dir)
    if not (reuse and (out / "seconds.txt").is_file()):
        shutil.rmtree(out, ignore_errors=True)
        start = time.perf_counter()
        result = build_trainer(cfg, train_data=train_data, callbacks=callbacks or []).fit()
        early = any(getattr(cb, "stopped_early", False) for cb in callbacks or [])
        if result.interrupted and not early:
            raise SystemExit(f"{out}: training was interrupted")
        (out / "seconds.txt").write_text(f"{time.perf_counter() - start:.1f}\n")
    import json

    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line]
    return {"seconds": float((out / "seconds.txt").read_text()), "records": records}


def last_step(run_dir: str, records: list[dict]) -> int:
    """The step of the run's last checkpoint (an early stop lands between logged steps)."""
    steps = [int(p.name.split("_")[-1]) for p in Path(run_dir, "checkpoints").glob("step_*")]
    return max(steps or [max(r["step"] for r in records)])


def load_backbone(cfg: RunConfig) -> Transformer:
    model = Transformer(cfg.model)
    init_from(model, cfg.run.out_dir)
    return model.eval()


def needle_positions(sample: TaskSample, row: int, vocab: TaskVocab) -> set[int]:
    ctx = sample.input_ids.shape[1] - sample.tail
    ids = sample.input_ids[row, :ctx].tolist()
    return {i for i in range(1, ctx) if ids[i] < vocab.filler0}


def evaluate(
    model: Transformer,
    sample: TaskSample,
    policy: str,
    budget: int,
    chunk: int,
    heads: str,
    vocab: TaskVocab,
    options: dict[str, Any] | None = None,
    compact_positions: bool = False,
) -> dict[str, Any]:
    kwargs = ({"heads": heads} if policy == "locret" else {}) | (options or {})
    result = generate_with_policy(
        model,
        sample.input_ids,
        build_policy(policy, **kwargs),
        None if policy == "full" else budget,
        chunk,
        max_new_tokens=0,
        tail=sample.tail,
        compact_positions=compact_positions,
    )
    cfg = model.config
    bytes_per_token = cfg.n_layers * 2 * cfg.n_kv_heads * cfg.head_dim * 4  # K and V, fp32, one sequence
    needles = [needle_positions(sample, b, vocab) for b in range(sample.input_ids.shape[0])]
    per_layer = []  # share of needle tokens each layer still holds, mean over rows and KV heads
    for kept in result.stats.kept_positions:  # [B, Hkv, L] original positions
        shares = [
            len(needles[b] & set(kept[b, h].tolist())) / max(1, len(needles[b]))
            for b in range(kept.shape[0])
            for h in range(kept.shape[1])
        ]
        per_layer.append(sum(shares) / len(shares))
    return {
        "accuracy": answer_accuracy(result.tail_logits, sample),
        "peak_kv_tokens": result.stats.peak_kv_tokens,
        "peak_kv_bytes_per_seq": result.stats.peak_kv_tokens * bytes_per_token,
        "needles_retained": sum(per_layer) / len(per_layer),
        "needles_retained_per_layer": per_layer,
    }


def _stages(records: list[dict]) -> str:
    """'copy@0, 64@350, ...': the logged step at which each curriculum stage (0 = copy warm-up) shows up."""
    seen: dict[int, int] = {}
    for r in records:
        if "curriculum/context_len" in r:
            seen.setdefault(r["curriculum/context_len"], r["step"])
    return ", ".join(f"{'copy' if n == 0 else f'T={n}'}@{step}" for n, step in seen.items())


def cis_eval(model: Transformer, sample: TaskSample) -> dict[str, float]:
    with torch.no_grad():
        heads_loss(model, sample.to_batch(), with_stats=True)
    return dict(model.retaining_heads.last_stats)


def plot(rows: list[dict], ctx_len: int, path: Path, task: str = "mqar") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=90)
    for policy in POLICIES:
        pts = sorted((ctx_len / r["budget"], r["accuracy"]) for r in rows if r["policy"] == policy)
        style = {"ls": "--", "color": "k"} if policy == "full" else {"marker": "o", "ms": 3}
        ax.plot(*zip(*pts, strict=True), label=policy, lw=2.2 if policy == "locret" else 1.2, **style)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("KV compression (context / budget)")
    ax.set_ylabel(f"{task} answer accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def markdown(payload: dict, args: argparse.Namespace) -> str:
    rows, ctx = payload["results"], payload["context_tokens"]
    acc = {(r["budget"], r["policy"]): r for r in rows}
    bb, hd = payload["backbone"], payload["heads"]
    lines = [
        f"# Locret: {args.task} answer accuracy vs KV budget "
        f"(T = {args.seq_len}, context {ctx}, chunk {args.chunk})",
        "",
        f"Backbone ({bb['params']} params, {bb['steps']} trainer steps, "
        f"{bb['seconds']:.0f} s; curriculum stages first logged at {bb['curriculum_stages']}): "
        "in-distribution accuracy "
        + ", ".join(f"{t} **{a:.3f}**" for t, a in bb["accuracy_per_task"].items())
        + f". Heads ({hd['steps']} steps, "
        f"{hd['seconds']:.0f} s): CIS loss {hd['cis_loss_first']:.3f} → "
        f"{hd['cis_loss_last']:.3f}, held-out top-10% overlap "
        f"{hd['held_out']['cis_top10_overlap']:.3f}. {args.eval_rows} eval rows, "
        f"{torch.get_num_threads()} CPU thread(s).",
        "",
        "| budget | compression | "
        + " | ".join(POLICIES)
        + " | peak KV (locret) | KV KiB/seq (full → locret) |",
        "|---|---|" + "---|" * len(POLICIES) + "---|---|",
    ]
    for b in args.budgets:
        cells = " | ".join(f"{acc[(b, p)]['accuracy']:.3f}" for p in POLICIES)
        loc, full = acc[(b, "locret")], acc[(b, "full")]
        lines.append(
            f"| {b} | {ctx / b:.1f}× | {cells} | {loc['peak_kv_tokens']} (≤ {b + args.chunk}) | "
            f"{full['peak_kv_bytes_per_seq'] / 1024:.0f} → {loc['peak_kv_bytes_per_seq'] / 1024:.0f} |"
        )
    g = payload["goals"]
    lines += [
        "",
        "Ablations (accuracy): "
        + "; ".join(
            f"b={b}: " + ", ".join(f"{n} {acc[(b, n)]['accuracy']:.3f}" for n in ABLATIONS)
            for b in args.budgets
        ),
        "",
        "Needle tokens (keys, values, markers) retained, mean over layers and KV heads (per layer in the "
        "JSON; Locret keeps them where the answer attends, not in every layer): "
        + "; ".join(
            f"b={b}: " + ", ".join(f"{p} {acc[(b, p)]['needles_retained']:.2f}" for p in POLICIES[1:])
            for b in args.budgets
        ),
        "",
        ("" if g["backbone_ok"] else "**Backbone below 95% in distribution: the goal checks mean nothing.** ")
        + f"Goals: Locret at ~8× (budget {g['budget_8x']}) keeps "
        f"{g['locret_over_full_8x']:.1%} of full-cache "
        f"accuracy (goal ≥ 90%: {'met' if g['within_10pct_8x'] else 'not met'}); "
        "beats every baseline at every budget: "
        f"{'yes' if g['beats_all_baselines'] else 'no (' + ', '.join(g['not_beaten']) + ')'}; "
        f"peak KV ≤ budget + chunk for every evicting policy: {'yes' if g['peak_within_bound'] else 'no'}.",
        "",
        "Peak KV bytes are the entries held × (layers × K,V × KV heads × head_dim × 4 bytes), per sequence.",
        "",
        "![accuracy vs compression](locret.png)",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny steps and sizes")
    parser.add_argument(
        "--reuse", action="store_true", help="reuse finished run dirs under runs/locret_bench"
    )
    parser.add_argument("--backbone-steps", type=int, default=2000, help="at most; stops once solved")
    parser.add_argument("--head-steps", type=int, default=600)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--chunk", type=int, default=16)
    parser.add_argument("--budgets", type=int, nargs="+", default=[16, 24, 32, 48, 64])
    parser.add_argument("--eval-rows", type=int, default=256)
    parser.add_argument(
        "--task",
        choices=TASKS,
        default="mqar",
        help="the task the heads are trained and the policies evaluated on (the backbone learns all three)",
    )
    parser.add_argument("--runs", default="runs/locret_bench", help="parent of the backbone/heads run dirs")
    parser.add_argument("--name", default="locret", help="results file stem")
    args = parser.parse_args()
    bb_set, hd_set = [f"train.steps={args.backbone_steps}"], [f"train.steps={args.head_steps}"]
    if args.quick:
        args.backbone_steps, args.head_steps, args.eval_rows, args.budgets = 30, 12, 16, [16, 32]
        bb_set = ["train.steps=30", "schedule.warmup_steps=5", "checkpoint.interval=30"]
        bb_set.append("run.out_dir=runs/locret_bench/quick_backbone")
        hd_set = ["train.steps=12", "schedule.warmup_steps=8", "checkpoint.interval=12"]
        hd_set += [
            "run.out_dir=runs/locret_bench/quick_heads",
            "init.from_path=runs/locret_bench/quick_backbone",
        ]
    else:
        bb_set += [f"checkpoint.interval={args.backbone_steps}", f"run.out_dir={args.runs}/backbone"]
        hd_set += [f"run.out_dir={args.runs}/heads", f"init.from_path={args.runs}/backbone"]
        hd_set += [
            f"checkpoint.interval={args.head_steps}",
            f"schedule.warmup_steps={2 * args.head_steps // 3}",
        ]
    torch.manual_seed(0)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    vocab = TaskVocab()

    bb_cfg = load_recipe(RECIPES / "locret_backbone_tiny.yaml", bb_set)
    per_step = bb_cfg.batch.global_tokens // bb_cfg.data.seq_len
    source = TaskCurriculum(per_step, args.seq_len, vocab=vocab)
    bb = run_stage(bb_cfg, source, args.reuse, [CurriculumCallback(source)])
    model = load_backbone(bb_cfg)

    def make(n: int, seed: int, task: str = args.task) -> TaskSample:
        return eval_sample(task, n, args.seq_len, vocab, seed)

    per_task = {}
    with torch.no_grad():
        for task in TASKS:
            sample = make(args.eval_rows, 2 * 10**6, task)
            per_task[task] = answer_accuracy(model(sample.input_ids), sample)
    test = make(args.eval_rows, 2 * 10**6)
    in_dist = per_task[args.task]
    print(f"backbone: in-distribution accuracy {per_task} ({bb['seconds']:.0f} s)", flush=True)

    hd_cfg = load_recipe(RECIPES / "locret_heads_tiny.yaml", hd_set)
    hd_per_step = hd_cfg.batch.global_tokens // hd_cfg.data.seq_len
    n_head_samples = args.head_steps * hd_per_step
    heads_data = TaskHeads(args.task, n_head_samples, args.seq_len, vocab)
    hd = run_stage(hd_cfg, heads_data, args.reuse)
    heads_file = str(Path(hd_cfg.run.out_dir) / hd_cfg.retaining_heads.out_file)
    cis = [(r["step"], r["cis_loss"]) for r in hd["records"] if "cis_loss" in r]
    load_heads(model, heads_file)
    held_out = cis_eval(model, make(32, 3 * 10**6))
    print(f"heads: cis_loss {cis[0][1]:.3f} -> {cis[-1][1]:.3f}; held-out {held_out}", flush=True)

    rows = []
    for budget in args.budgets:
        runs = [(p, p, {}, False) for p in POLICIES] + [(n, *spec) for n, spec in ABLATIONS.items()]
        for policy, base, options, compact in runs:
            start = time.perf_counter()
            res = evaluate(model, test, base, budget, args.chunk, heads_file, vocab, options, compact)
            rows.append({"budget": budget, "policy": policy, **res, "seconds": time.perf_counter() - start})
            print(rows[-1], flush=True)

    ctx_len = args.seq_len - test.tail
    acc = {(r["budget"], r["policy"]): r for r in rows}
    b8 = min(args.budgets, key=lambda b: abs(ctx_len / b - 8))
    ratio = acc[(b8, "locret")]["accuracy"] / max(1e-9, acc[(b8, "full")]["accuracy"])
    not_beaten = [
        f"{p}@{b}"
        for b in args.budgets
        for p in POLICIES[1:-1]
        if acc[(b, p)]["accuracy"] >= acc[(b, "locret")]["accuracy"]
    ]
    payload = {
        "config": vars(args) | {"eval_setting": eval_sample.__doc__, "model": bb_cfg.model.to_dict()},
        "machine": machine_info(),
        "context_tokens": ctx_len,
        "backbone": {
            "params": bb_cfg.model.num_params(),
            "steps": last_step(bb_cfg.run.out_dir, bb["records"]),
            "task": args.task,
            "curriculum": [
                (r["step"], r["curriculum/context_len"])
                for r in bb["records"]
                if "curriculum/context_len" in r
            ],
            "curriculum_stages": _stages(bb["records"]),
            "seconds": bb["seconds"],
            "in_distribution_accuracy": in_dist,
            "accuracy_per_task": per_task,
            "loss_curve": [(r["step"], r["train/loss"]) for r in bb["records"] if "train/loss" in r],
        },
        "heads": {
            "steps": args.head_steps,
            "seconds": hd["seconds"],
            "cis_loss_curve": cis,
            "cis_loss_first": cis[0][1],
            "cis_loss_last": cis[-1][1],
            "held_out": held_out,
        },
        "goals": {
            "backbone_ok": in_dist >= 0.95,
            "budget_8x": b8,
            "locret_over_full_8x": ratio,
            "within_10pct_8x": ratio >= 0.9,
            "beats_all_baselines": not not_beaten,
            "not_beaten": not_beaten,
            "peak_within_bound": all(
                r["peak_kv_tokens"] <= r["budget"] + args.chunk for r in rows if r["policy"] != "full"
            ),
        },
        "results": rows,
    }
    name = args.name + ("_quick" if args.quick else "")
    plot(rows, ctx_len, RESULTS_DIR / f"{name}.png", args.task)
    md = markdown(payload, args).replace("(locret.png)", f"({name}.png)")
    print(*write_results(name, payload, md), sep="\n")


if __name__ == "__main__":
    main()
