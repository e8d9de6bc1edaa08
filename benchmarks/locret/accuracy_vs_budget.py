"""Locret experiment A (reference/longctx.md §7.2): MQAR value accuracy vs KV budget for each policy.

1. Train a tiny GQA decoder on MQAR with a length curriculum (T = 8 → 256; answers hidden in the query
   segment) — a plain torch loop until the densa trainer runs this as a recipe.
2. Train retaining heads (frozen backbone) on fresh MQAR samples.
3. For each budget and policy: chunked prefill of the context (query-agnostic), the query segment as the
   tail, teacher-forced value accuracy; also peak KV tokens and the share of needle tokens retained.

Writes benchmarks/results/locret_accuracy_vs_budget.{json,md}.
`--quick` is a smoke run (about a minute on 2 cores; its numbers mean nothing).
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks.common import machine_info, write_results
from densa.longctx import build_policy, generate_with_policy
from densa.longctx.tasks import TaskVocab, answer_accuracy, mqar
from densa.models import ModelConfig, Transformer, causal_lm_loss
from densa.retaining_heads import train_heads

POLICIES = ["full", "streaming_llm", "h2o", "snapkv", "random", "locret"]


def model_config(vocab: TaskVocab) -> ModelConfig:
    # §7.1: L = 4, d = 128, 4 query / 2 KV heads, head_dim 32, SwiGLU 256, RoPE θ = 1e4.
    return ModelConfig(
        vocab_size=vocab.size, dim=128, n_layers=4, n_heads=4, n_kv_heads=2, ffn_dim=256, max_seq_len=512
    )


def curriculum(step: int, steps: int, max_len: int) -> tuple[int, tuple[int, int]]:
    """Sequence length and pair range growing from T = 8 (2–3 pairs) to max_len (6–12 pairs)."""
    frac = min(1.0, step / max(1, int(0.8 * steps)))
    seq = int(8 * (max_len / 8) ** frac)
    hi = max(3, min(12, seq // 16))
    return seq, (max(2, hi // 2), hi)


def train_backbone(model: Transformer, vocab: TaskVocab, steps: int, batch: int, max_len: int) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.0)
    warmup = min(100, steps // 10 + 1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup))
    model.train()
    for step in range(steps):
        seq, pairs = curriculum(step, steps, max_len)
        n_queries = min(4, pairs[0])
        sample = mqar(batch, seq + 2 * n_queries, pairs, n_queries, vocab=vocab, seed=step)
        loss = causal_lm_loss(model(sample.input_ids), sample.labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
    model.eval()
    test = mqar(64, max_len, 8, 4, vocab=vocab, seed=10**6)
    with torch.no_grad():
        return answer_accuracy(model(test.input_ids), test)


def needle_positions(sample, row: int) -> set[int]:
    ids = sample.input_ids[row].tolist()
    ctx = len(ids) - sample.tail
    return {i for i in range(ctx) if sample.input_ids[row, i] < TaskVocab().filler0 and i > 0}


def evaluate(model: Transformer, sample, policy: str, budget: int, chunk: int) -> dict[str, float]:
    kwargs = {"n_stabilizers": 4} if policy == "locret" else {}
    result = generate_with_policy(
        model,
        sample.input_ids,
        build_policy(policy, **kwargs),
        None if policy == "full" else budget,
        chunk,
        max_new_tokens=0,
        tail=sample.tail,
    )
    kept = result.stats.kept_positions[-1]  # last layer, [B, Hkv, L]
    retained = []
    for b in range(kept.shape[0]):
        needles = needle_positions(sample, b)
        for h in range(kept.shape[1]):
            retained.append(len(needles & set(kept[b, h].tolist())) / max(1, len(needles)))
    return {
        "accuracy": answer_accuracy(result.tail_logits, sample),
        "peak_kv_tokens": result.stats.peak_kv_tokens,
        "needles_retained": sum(retained) / len(retained),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny steps and sizes")
    parser.add_argument("--backbone-steps", type=int, default=1500)
    parser.add_argument("--head-steps", type=int, default=300)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--chunk", type=int, default=32)
    parser.add_argument("--budgets", type=int, nargs="+", default=[16, 24, 32, 48, 64])
    parser.add_argument("--eval-rows", type=int, default=128)
    args = parser.parse_args()
    if args.quick:
        args.backbone_steps, args.head_steps, args.seq_len, args.eval_rows = 20, 5, 96, 8
        args.budgets = [16, 32]
    torch.manual_seed(0)
    torch.set_num_threads(2)
    vocab = TaskVocab()
    model = Transformer(model_config(vocab))
    start = time.perf_counter()
    in_dist = train_backbone(model, vocab, args.backbone_steps, 32, args.seq_len)
    backbone_s = time.perf_counter() - start

    head_batches = [
        mqar(4, args.seq_len, 8, 4, vocab=vocab, seed=10**5 + i).to_batch() for i in range(args.head_steps)
    ]
    start = time.perf_counter()
    history = train_heads(
        model, head_batches, args.head_steps, hidden=64, log_every=max(1, args.head_steps // 5)
    )
    heads_s = time.perf_counter() - start

    sample = mqar(args.eval_rows, args.seq_len, 8, 4, vocab=vocab, seed=2 * 10**6)
    rows = []
    for budget in args.budgets:
        for policy in POLICIES:
            rows.append(
                {"budget": budget, "policy": policy, **evaluate(model, sample, policy, budget, args.chunk)}
            )
            print(rows[-1], flush=True)

    payload = {
        "config": vars(args) | {"model": model_config(vocab).to_dict()},
        "machine": machine_info(),
        "backbone": {"in_distribution_accuracy": in_dist, "seconds": backbone_s},
        "heads": {"seconds": heads_s, "final": history[-1]},
        "results": rows,
    }
    table = ["| budget | " + " | ".join(POLICIES) + " |", "|---|" + "---|" * len(POLICIES)]
    for budget in args.budgets:
        accs = [
            next(r["accuracy"] for r in rows if r["budget"] == budget and r["policy"] == p) for p in POLICIES
        ]
        table.append(f"| {budget} | " + " | ".join(f"{a:.3f}" for a in accs) + " |")
    md = (
        f"# Locret: MQAR value accuracy vs KV budget (T = {args.seq_len}, chunk {args.chunk})\n\n"
        f"Backbone in-distribution accuracy {in_dist:.3f}; heads top-10% CIS overlap "
        f"{history[-1].get('cis_top10_overlap', float('nan')):.3f}.\n\n" + "\n".join(table) + "\n"
    )
    name = "locret_accuracy_vs_budget" + ("_quick" if args.quick else "")
    print(*write_results(name, payload, md), sep="\n")


if __name__ == "__main__":
    main()
