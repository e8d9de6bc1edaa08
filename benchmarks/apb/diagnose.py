"""Why APB loses on repeated_pair (issue 13): is what a later host needs inside the passing selection?

Per H, per layer and KV head, over the benchmark's rows (benchmarks/apb/run.py's seeds): the recall of the
earlier occurrence's key and value tokens (the bigram a later host's occurrence must see) in the passing
block of the earlier host, for the target key and for all keys; and, from one full-attention forward, the
attention mass the later occurrence's key and value tokens put on the earlier bigram (which layers read
it). Accuracy of APB variants: the pool kernel, and an oracle that scores exactly the bigram tokens of the
host's block (the best any scorer can do at this passing length and kernel).

    python -m benchmarks.apb.diagnose --rows 256 --out runs/apb_bench/diagnose.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.apb.run import CONTEXT, HEADS, make_task
from benchmarks.locret.accuracy_vs_budget import RECIPES, load_backbone
from densa.config.load import load_recipe
from densa.longctx.apb import SequenceParallelSession, SPConfig
from densa.longctx.apb import session as session_module
from densa.longctx.apb.prefill_attention import passing_indices
from densa.longctx.tasks import TaskSample, TaskVocab, answer_accuracy
from densa.retaining_heads.labels import capture_qk
from densa.testing.distributed import run_distributed

VOCAB = TaskVocab()


def bigrams(sample: TaskSample) -> list[dict[int, tuple[int, int]]]:
    """Per row: key token -> (first, second) position of its key token; the target is the row's answer."""
    ctx = sample.input_ids.shape[1] - sample.tail
    out = []
    for b in range(sample.input_ids.shape[0]):
        ids = sample.input_ids[b, :ctx].tolist()
        seen: dict[int, list[int]] = {}
        for p, t in enumerate(ids):
            if VOCAB.key0 <= t < VOCAB.value0:
                seen.setdefault(t, []).append(p)
        out.append({k: (v[0], v[1]) for k, v in seen.items()})
    return out


def target_key(sample: TaskSample, b: int, pairs: dict[int, tuple[int, int]]) -> int:
    answer = int(sample.labels[b, -1])
    return next(k for k, (p1, p2) in pairs.items() if int(sample.input_ids[b, p1 + 1]) == answer)


def oracle_scores(context: torch.Tensor, rank: int, block: int, n_kv: int) -> torch.Tensor:
    """[B, Hkv, block]: 1 on the host's key and value tokens (every bigram), 0 elsewhere."""
    ids = context[:, rank * block : (rank + 1) * block]
    needle = (ids >= VOCAB.key0) & (ids < VOCAB.filler0)
    return needle.float().unsqueeze(1).expand(-1, n_kv, -1).contiguous()


def _rank(
    model: Any, config: SPConfig, heads: str | None, sample: TaskSample, batch: int, oracle: bool
) -> dict:
    """One rank of APB with the passing selection recorded: per layer [B, Hkv, l_p] local indices."""
    import torch.distributed as dist

    rank = dist.get_rank()
    context, query = sample.input_ids[:, : -sample.tail], sample.input_ids[:, -sample.tail :]
    original = session_module.select_passing
    chosen: list[list[torch.Tensor]] = []
    current: dict[str, Any] = {}

    def recording(scores, k, v, length, pool, gen):  # type: ignore[no-untyped-def]
        if oracle:
            block = k.shape[2]
            scores = oracle_scores(current["context"], rank, block, k.shape[1])
        if scores is not None:
            current["layers"].append(passing_indices(scores, length, pool))
        return original(scores, k, v, length, pool, gen)

    session_module.select_passing = recording
    logits = []
    for start in range(0, context.shape[0], batch):
        current.update(context=context[start : start + batch], layers=[])
        session = SequenceParallelSession(model, config, heads=heads)
        session.prefill(context[start : start + batch], query[start : start + batch])
        logits.append(session.decode(query[start : start + batch]))
        chosen.append(current["layers"])
    session_module.select_passing = original
    per_layer = (
        [torch.cat([c[layer] for c in chosen]) for layer in range(len(chosen[0]))] if chosen[0] else []
    )
    return {"logits": torch.cat(logits) if logits[0] is not None else None, "chosen": per_layer}


def recall(sample: TaskSample, chosen: list[list[torch.Tensor]], block: int, hosts: int) -> dict[str, Any]:
    """chosen[rank][layer] [B, Hkv, l_p] local indices. Recall of the earlier bigram's key and value tokens
    (whose later occurrence is on a later host) per layer and KV head, for the target and for all keys."""
    pairs = bigrams(sample)
    n_layers, n_kv = len(chosen[0]), chosen[0][0].shape[1]
    counts = {
        who: {tok: torch.zeros(n_layers, n_kv) for tok in ("key", "value", "both")}
        for who in ("target", "all")
    }
    totals = {"target": 0, "all": 0}
    for b, row in enumerate(pairs):
        tgt = target_key(sample, b, row)
        for key, (p1, _p2) in row.items():
            host = p1 // block
            if host == hosts - 1:
                continue  # cannot happen (i < j), kept for safety
            for layer in range(n_layers):
                sel = chosen[host][layer][b]  # [Hkv, l_p]
                for g in range(n_kv):
                    has_k = bool((sel[g] == p1 - host * block).any())
                    has_v = bool((sel[g] == p1 + 1 - host * block).any())
                    for who in ("target", "all") if key == tgt else ("all",):
                        counts[who]["key"][layer, g] += has_k
                        counts[who]["value"][layer, g] += has_v
                        counts[who]["both"][layer, g] += has_k and has_v
            totals["all"] += 1
            totals["target"] += key == tgt
    return {
        who: {tok: (c / max(1, totals[who])).round(decimals=3).tolist() for tok, c in counts[who].items()}
        for who in counts
    }


@torch.no_grad()
def attention_reads(model: Any, sample: TaskSample, rows: int = 64) -> list[list[dict[str, float]]]:
    """Full attention: per layer and KV head, the mean attention mass (summed over the group's query
    heads, averaged) from the later occurrence's key token and value token onto the earlier bigram."""
    ids = sample.input_ids[:rows]
    with capture_qk(model) as qk:
        model(ids)
    pairs = bigrams(sample)[:rows]
    out = []
    for rec in qk:
        q, k = rec["q"].float(), rec["k"].float()
        n_q, n_kv, seq, dim = q.shape[1], k.shape[1], q.shape[2], q.shape[3]
        group = n_q // n_kv
        k = k.repeat_interleave(group, dim=1)
        att = (q @ k.transpose(-1, -2)) / dim**0.5
        att = att.masked_fill(torch.ones(seq, seq, dtype=torch.bool).triu(1), float("-inf")).softmax(-1)
        layer_out = []
        for g in range(n_kv):
            heads = att[:, g * group : (g + 1) * group]  # [B, group, T, T]
            mass = {"key_reads_earlier_bigram": 0.0, "value_reads_earlier_bigram": 0.0}
            n = 0
            for b, row in enumerate(pairs):
                for p1, p2 in row.values():
                    mass["key_reads_earlier_bigram"] += float(heads[b, :, p2, p1 : p1 + 2].sum(-1).mean())
                    mass["value_reads_earlier_bigram"] += float(
                        heads[b, :, p2 + 1, p1 : p1 + 2].sum(-1).mean()
                    )
                    n += 1
            layer_out.append({k: round(v / n, 3) for k, v in mass.items()})
        out.append(layer_out)
    return out


VARIANTS = {
    "heads_pool5": (SPConfig("apb"), False),
    "heads_pool3": (SPConfig("apb", pool_kernel=3), False),
    "heads_pool1": (SPConfig("apb", pool_kernel=1), False),
    "oracle_pool5": (SPConfig("apb"), True),
    "oracle_pool1": (SPConfig("apb", pool_kernel=1), True),
    "oracle_pool1_query_outside_anchor": (SPConfig("apb", pool_kernel=1, query_in_anchor=False), True),
    "heads_pool1_query_outside_anchor": (SPConfig("apb", pool_kernel=1, query_in_anchor=False), False),
    "heads_pool3_query_outside_anchor": (SPConfig("apb", pool_kernel=3, query_in_anchor=False), False),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--hosts", type=int, nargs="+", default=[2, 4])
    p.add_argument("--rows", type=int, default=256)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--variants", nargs="*", default=list(VARIANTS))
    p.add_argument("--heads", default=HEADS["repeated_pair"], help="folder with retaining_heads.safetensors")
    p.add_argument("--passing-divisor", type=int, default=8)
    p.add_argument("--seed", type=int, default=1000, help="rows of seed + H (run.py's: 1000)")
    p.add_argument("--out", default="runs/apb_bench/diagnose.json")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    model = load_backbone(load_recipe(RECIPES / "apb_backbone_tiny.yaml"))
    heads = f"{args.heads}/retaining_heads.safetensors"
    result: dict[str, Any] = {"rows": args.rows, "seed": args.seed, "heads": args.heads}
    result["passing_divisor"] = args.passing_divisor
    for hosts in args.hosts:
        sample = make_task("repeated_pair", args.rows, hosts, seed=args.seed + hosts)
        block = CONTEXT // hosts
        cell: dict[str, Any] = {"attention_reads": attention_reads(model, sample)}
        with torch.no_grad():
            cell["full_accuracy"] = answer_accuracy(model(sample.input_ids)[:, -1:], sample)
        for name in args.variants:
            config, oracle = VARIANTS[name]
            config = dataclasses.replace(config, passing_len=block // args.passing_divisor)
            start = time.perf_counter()
            res = run_distributed(
                _rank, hosts, args=(model, config, heads, sample, args.batch, oracle), timeout=900
            )
            cell[name] = {
                "accuracy": answer_accuracy(res[-1]["logits"], sample),
                "recall": recall(sample, [r["chosen"] for r in res], block, hosts),
                "seconds": round(time.perf_counter() - start, 1),
            }
            rec = cell[name]["recall"]
            print(
                f"H={hosts} {name}: acc {cell[name]['accuracy']:.3f}; both-token recall per layer (mean over"
                f" KV heads) target {[round(sum(x) / len(x), 2) for x in rec['target']['both']]}"
                f" all {[round(sum(x) / len(x), 2) for x in rec['all']['both']]}",
                flush=True,
            )
        result[f"H{hosts}"] = cell
        print(f"H={hosts} full {cell['full_accuracy']:.3f}; reads {cell['attention_reads']}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
