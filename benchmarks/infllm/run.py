"""InfLLM experiment B (reference/longctx.md §7.3): length extrapolation of a backbone trained at T = 256.

Backbone: `recipes/locret_backbone_tiny.yaml` (MQAR + passkey + first-occurrence, T ≤ 256), trained as the
Locret benchmark does (shared run dir runs/locret_bench/backbone, reused when complete). Locret heads:
`recipes/locret_heads_tiny.yaml`, one set per task (runs/infllm_bench/heads_TASK, ~20 s each).

For T in --lengths and each task (the fixed in-distribution setting of benchmarks/locret: the same needles,
spread over a longer context), every method reads the context by chunked prefill, then the query segment
one token at a time as decoding would; teacher-forced answer accuracy. Methods:
- full: full attention at unseen RoPE distances (T > 256);
- streaming_llm: 4 sinks + the most recent window (budget 132, chunk 16);
- infllm: n_init 4, n_local 128, block 16, repr_topk 2, topk 4, exc_block 16, LRU cache of 8 units;
- infllm_ordered: the same with memory_positions "ordered" (densa's extension: the chosen units in their
  original order just before the window, every memory distance ≤ 4 + 4·16 + 16 + 16 + 128 < 256);
- locret: budget 132, chunk 16, its heads, compacted positions (Locret's own position handling);
- ablations of InfLLM: memory at original positions; representative = mean key / random tokens;
  repr_topk 1 and 4; topk 8; ordered with topk 8 (memory distances past the trained 256) (the ablations
  run at --ablation-lengths).
Also per InfLLM run: unit recall (for each answer whose source token sits in a formed memory unit, was
that unit chosen by the lookup of the answer's query, per layer), attended keys per query, unit loads and
cache hits, peak K/V entries on the device per layer (vs offloaded); on first-occurrence, the share of
wrong answers that copy a later occurrence's value (order lost).

Writes benchmarks/results/infllm.{json,md,png}; rows are cached in runs/infllm_bench/rows.jsonl so an
interrupted run resumes (`--fresh` recomputes). `--quick` is a smoke run whose numbers mean nothing. The
committed results are the defaults with OMP_NUM_THREADS=1.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import RESULTS_DIR, machine_info, write_results
from benchmarks.infllm.report import TASKS, goals, markdown, plot
from benchmarks.locret.accuracy_vs_budget import RECIPES, load_backbone, run_stage
from benchmarks.locret.task_data import CurriculumCallback, TaskCurriculum, TaskHeads, eval_sample
from densa.config.load import load_recipe
from densa.longctx import PolicySession, build_policy
from densa.longctx.tasks import TaskSample, TaskVocab, answer_accuracy
from densa.models import Transformer

INFLLM = dict(
    n_init=4, n_local=128, block_size=16, repr_topk=2, topk=4, exc_block_size=16, max_cached_units=8
)
BUDGET, CHUNK = 132, 16
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "full": ("full", {}),
    "streaming_llm": ("streaming_llm", {"n_sink": 4}),
    "infllm": ("infllm", INFLLM),
    "infllm_ordered": ("infllm", INFLLM | {"memory_positions": "ordered"}),
    "locret": ("locret", {"n_sink": 4}),
}
ABLATIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "infllm_original_positions": ("infllm", INFLLM | {"memory_positions": "original"}),
    "infllm_repr_mean": ("infllm", INFLLM | {"representative": "mean"}),
    "infllm_repr_random": ("infllm", INFLLM | {"representative": "random"}),
    "infllm_repr_top1": ("infllm", INFLLM | {"repr_topk": 1}),
    "infllm_repr_top4": ("infllm", INFLLM | {"repr_topk": 4}),
    "infllm_topk8": ("infllm", INFLLM | {"topk": 8, "max_cached_units": 16}),
    # ordered with 8 units: memory distances up to 4 + 8·16 + 16 + 16 + 128 = 292, past the trained 256
    "infllm_ordered_topk8": (
        "infllm",
        INFLLM | {"memory_positions": "ordered", "topk": 8, "max_cached_units": 16},
    ),
}


def answer_sources(sample: TaskSample, task: str, vocab: TaskVocab) -> list[list[tuple[int, int]]]:
    """Per row, (answer query position t, position of the context token the answer copies)."""
    ctx = sample.input_ids.shape[1] - sample.tail
    out = []
    for b in range(sample.input_ids.shape[0]):
        ids = sample.input_ids[b].tolist()
        answers = sample.answer_mask[b].nonzero().flatten().tolist()
        pairs = []
        for t in answers:
            if task == "passkey":
                start = ids.index(vocab.passkey)
                pairs.append((t, start + 1 + (t - ctx - 1)))
            else:  # the first value after the queried key (MQAR: the only one)
                key = ids[t]
                pairs.append((t, next(p + 1 for p in range(ctx - 1) if ids[p] == key)))
        out.append(pairs)
    return out


def later_value_errors(logits: torch.Tensor, sample: TaskSample, vocab: TaskVocab) -> float:
    """first-occurrence: the share of wrong answers that give the value of a later occurrence of the key
    (the order of the two occurrences lost), among all wrong answers."""
    ctx = sample.input_ids.shape[1] - sample.tail
    wrong = later = 0
    pred = logits.argmax(-1)
    for b in range(sample.input_ids.shape[0]):
        ids = sample.input_ids[b].tolist()
        for t in sample.answer_mask[b].nonzero().flatten().tolist():
            guess = int(pred[b, t - ctx])
            if guess == int(sample.labels[b, t]):
                continue
            values = [ids[p + 1] for p in range(ctx - 1) if ids[p] == ids[t]]
            wrong, later = wrong + 1, later + (guess in values[1:])
    return later / wrong if wrong else float("nan")


def unit_recall(log: list[dict], sources: list[list[tuple[int, int]]], cfg: dict) -> dict[str, float]:
    """Share of (row, answer, layer) whose source token's unit the answer's lookup chose, over the cases
    where that unit existed; `any_layer`: chosen in at least one layer."""
    by_pos: dict[int, list[dict]] = {}
    for entry in log:
        by_pos.setdefault(entry["position"], []).append(entry)
    hits = total = any_hits = any_total = 0
    for b, pairs in enumerate(sources):
        for t, src in pairs:
            unit = (src - cfg["n_init"]) // cfg["block_size"]
            entries = [e for e in by_pos.get(t, []) if src >= cfg["n_init"] and unit < e["n_units"]]
            if not entries:
                continue
            chosen = [unit in e["units"][b] for e in entries]
            hits, total = hits + sum(chosen), total + len(chosen)
            any_hits, any_total = any_hits + any(chosen), any_total + 1
    return {
        "unit_recall": hits / total if total else float("nan"),
        "unit_recall_any_layer": any_hits / any_total if any_total else float("nan"),
        "recall_cases": any_total,
    }


def evaluate(
    model: Transformer, sample: TaskSample, task: str, method: str, spec: tuple[str, dict], heads: str
) -> dict[str, Any]:
    name, options = spec
    options = dict(options)
    if name == "locret":
        options["heads"] = heads
    if name == "infllm":
        options["record_lookups"] = True
    policy = build_policy(name, **options)
    budget = None if name in ("full", "infllm") else BUDGET
    chunk = 256 if name == "full" else CHUNK
    ctx = sample.input_ids.shape[1] - sample.tail
    start = time.perf_counter()
    with PolicySession(model, policy, budget, chunk, compact_positions=name == "locret") as session:
        session.prefill(sample.input_ids[:, :ctx])
        logits = [
            session.forward(sample.input_ids[:, t : t + 1]) for t in range(ctx, sample.input_ids.shape[1])
        ]
        stats = session.finish()
    cfg = model.config
    tail_logits = torch.cat(logits, 1)
    row: dict[str, Any] = {
        "accuracy": answer_accuracy(tail_logits, sample),
        "peak_kv_tokens": stats.peak_kv_tokens,
        "peak_kv_bytes_per_seq": stats.peak_kv_tokens * cfg.n_layers * 2 * cfg.n_kv_heads * cfg.head_dim * 4,
        "seconds": time.perf_counter() - start,
    }
    if task == "first_occurrence":
        row["wrong_is_later_value"] = later_value_errors(tail_logits, sample, TaskVocab())
    if stats.memory is not None:
        mem = dict(stats.memory)
        log = session.context.stats.lookup_log
        row |= {k: mem[k] for k in ("units", "unit_loads", "cache_hits", "hit_rate", "attended_mean")}
        row |= {"attended_max": mem["attended_max"], "offloaded_tokens": mem["offloaded_tokens"]}
        row |= unit_recall(log, answer_sources(sample, task, TaskVocab()), options)
    else:
        row["attended_mean"] = row["attended_max"] = min(stats.peak_kv_tokens, sample.input_ids.shape[1])
    return row


def train(args: argparse.Namespace) -> tuple[Transformer, dict[str, str], dict[str, Any]]:
    """The backbone (reused from the Locret benchmark when complete) and one set of Locret heads per task."""
    vocab = TaskVocab()
    overrides = [f"train.steps={args.backbone_steps}", f"checkpoint.interval={args.backbone_steps}"]
    bb_cfg = load_recipe(RECIPES / "locret_backbone_tiny.yaml", overrides + [f"run.out_dir={args.backbone}"])
    source = TaskCurriculum(bb_cfg.batch.global_tokens // bb_cfg.data.seq_len, 256, vocab=vocab)
    bb = run_stage(bb_cfg, source, True, [CurriculumCallback(source)])
    model = load_backbone(bb_cfg)
    heads = {}
    for task in TASKS:
        out = Path(args.runs) / f"heads_{task}"
        hd_cfg = load_recipe(
            RECIPES / "locret_heads_tiny.yaml",
            [f"run.out_dir={out}", f"init.from_path={args.backbone}", f"train.steps={args.head_steps}"]
            + [f"checkpoint.interval={args.head_steps}", f"schedule.warmup_steps={2 * args.head_steps // 3}"],
        )
        per_step = hd_cfg.batch.global_tokens // hd_cfg.data.seq_len
        run_stage(hd_cfg, TaskHeads(task, args.head_steps * per_step, 256, vocab), True)
        heads[task] = str(out / hd_cfg.retaining_heads.out_file)
    return model, heads, {"params": bb_cfg.model.num_params(), "seconds": bb["seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 4 rows, T ≤ 512")
    parser.add_argument("--fresh", action="store_true", help="ignore cached rows")
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096])
    parser.add_argument("--ablation-lengths", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--eval-rows", type=int, default=64)
    parser.add_argument("--backbone-steps", type=int, default=2000)
    parser.add_argument("--head-steps", type=int, default=600)
    parser.add_argument("--backbone", default="runs/locret_bench/backbone")
    parser.add_argument("--runs", default="runs/infllm_bench")
    args = parser.parse_args()
    if args.quick:
        args.lengths, args.ablation_lengths, args.eval_rows = [256, 512], [512], 4
    torch.manual_seed(0)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    model, heads, backbone = train(args)
    cache_path = Path(args.runs) / ("rows_quick.jsonl" if args.quick else "rows.jsonl")
    cached = (
        {}
        if args.fresh or not cache_path.is_file()
        else {
            (r["task"], r["T"], r["method"], r["rows"]): r
            for r in map(json.loads, cache_path.read_text().splitlines())
        }
    )
    jobs = [(t, n, m, METHODS[m]) for t in TASKS for n in args.lengths for m in METHODS]
    jobs += [(t, n, m, ABLATIONS[m]) for t in TASKS for n in args.ablation_lengths for m in ABLATIONS]
    rows = []
    vocab = TaskVocab()
    for task, length, method, spec in jobs:
        key = (task, length, method, args.eval_rows)
        if key not in cached:
            sample = eval_sample(task, args.eval_rows, length, vocab, 2 * 10**6 + length)
            res = evaluate(model, sample, task, method, spec, heads[task])
            cached[key] = {"task": task, "T": length, "method": method, "rows": args.eval_rows} | res
            with cache_path.open("a") as f:
                f.write(json.dumps(cached[key]) + "\n")
        rows.append(cached[key])
        print(
            {k: v for k, v in cached[key].items() if not isinstance(v, float) or k == "accuracy"}, flush=True
        )
    payload = {
        "config": vars(args) | {"infllm": INFLLM, "budget": BUDGET, "chunk": CHUNK, "train_len": 256},
        "machine": machine_info(),
        "backbone": backbone,
        "results": rows,
    }
    payload["goals"] = goals(rows, args.lengths)
    payload["goals_ordered"] = goals(rows, args.lengths, "infllm_ordered")
    name = "infllm_quick" if args.quick else "infllm"
    plot(rows, args.lengths, RESULTS_DIR / f"{name}.png")
    print(*write_results(name, payload, markdown(payload, f"{name}.png")), sep="\n")


if __name__ == "__main__":
    main()
