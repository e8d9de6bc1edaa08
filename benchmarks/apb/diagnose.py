"""Why APB loses on repeated_pair (issue 13): is what a later host needs inside the passing selection?

Per H, per layer and KV head, over the benchmark's rows (benchmarks/apb/run.py's seeds): the recall of the
earlier occurrence's key and value tokens (the bigram a later host's occurrence must see) in the passing
block of the earlier host, for the target key and for all keys; and, from one full-attention forward, the
attention mass the later occurrence's key and value tokens put on the earlier bigram (which layers read
it). Accuracy of APB variants: the pool kernel, and an oracle that scores exactly the bigram tokens of the
host's block (the best any scorer can do at this passing length and kernel).

    python -m benchmarks.apb.diagnose    # benchmarks/results/apb_diagnose.{json,md}
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.apb.run import CONTEXT, HEADS, ROW_HEADS, make_task
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


# name -> (config, scorer): the heads trained on Locret's target (answer), on the cross-host readers
# (readers, the benchmark's), or the oracle; the max-pool kernel; passing_len is set per H
VARIANTS = {
    f"{scorer}_pool{k}": (SPConfig("apb", pool_kernel=k), scorer)
    for scorer in ("answer", "readers", "oracle")
    for k in (5, 3, 1)
    if scorer != "oracle" or k != 3
}
HELD_OUT = ["readers_pool5", "readers_pool3", "readers_pool1"]  # how the benchmark's kernel was picked


def run_rows(model: Any, hosts: int, seed: int, names: list[str], args: argparse.Namespace) -> dict[str, Any]:
    sample = make_task("repeated_pair", args.rows, hosts, seed=seed + hosts)
    block = CONTEXT // hosts
    # the oracle loads the readers' heads (APB with passing="heads" needs some), then replaces their scores
    heads = {"answer": ROW_HEADS["apb_answer_heads"], "readers": HEADS["repeated_pair"]}
    heads["oracle"] = heads["readers"]
    cell: dict[str, Any] = {"attention_reads": attention_reads(model, sample)}
    with torch.no_grad():
        cell["full_accuracy"] = answer_accuracy(model(sample.input_ids)[:, -1:], sample)
    for name in names:
        config, scorer = VARIANTS[name]
        config = dataclasses.replace(config, passing_len=block // args.passing_divisor)
        path = f"{heads[scorer]}/retaining_heads.safetensors"
        start = time.perf_counter()
        res = run_distributed(
            _rank, hosts, args=(model, config, path, sample, args.batch, scorer == "oracle"), timeout=1800
        )
        cell[name] = {
            "accuracy": answer_accuracy(res[-1]["logits"], sample),
            "recall": recall(sample, [r["chosen"] for r in res], block, hosts),
            "seconds": round(time.perf_counter() - start, 1),
        }
        print(f"seed {seed} H={hosts} {name}: acc {cell[name]['accuracy']:.3f}", flush=True)
    return cell


def _mean(row: list[float]) -> str:
    return f"{sum(row) / len(row):.2f}"


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# APB on repeated_pair: the passing selection vs what a later host needs",
        "",
        f"{result['rows']} rows per cell, passing = block/{result['passing_divisor']} tokens per host and KV"
        " head, anchor block/4 with the query. Recall: share of the earlier occurrences' key→value bigrams"
        " (both tokens) inside the earlier host's passing block, per layer (mean over the KV heads); target:"
        " the answer key, all: every key. Scorers: `answer` = heads trained on Locret's target (the QUERY"
        " position), `readers` = heads trained on the later occurrences' key and value plus QUERY,"
        " `oracle` = 1 on every key and value token of the block. Attention reads: full attention, mass"
        " from the later occurrence's key (value) token onto the earlier bigram, per layer and KV head.",
        "",
    ]
    for entry in result["runs"]:
        role = "the benchmark's rows" if entry["seed"] == result["benchmark_seed"] else "held-out rows"
        lines += [f"## seed {entry['seed']} + H ({role}), H = {entry['hosts']}", ""]
        cell = entry["cell"]
        lines += [f"Full attention: {cell['full_accuracy']:.3f}.", ""]
        lines += [
            "| variant | accuracy | target recall by layer | all-keys recall by layer |",
            "|---|---|---|---|",
        ]
        for name, r in cell.items():
            if name in ("attention_reads", "full_accuracy"):
                continue
            tgt = " / ".join(_mean(x) for x in r["recall"]["target"]["both"])
            every = " / ".join(_mean(x) for x in r["recall"]["all"]["both"])
            lines.append(f"| {name} | {r['accuracy']:.3f} | {tgt} | {every} |")
        reads = cell["attention_reads"]
        lines += [
            "",
            "| layer | key token reads (KV heads) | value token reads (KV heads) |",
            "|---|---|---|",
        ]
        for layer, heads in enumerate(reads):
            k = " / ".join(f"{h['key_reads_earlier_bigram']:.3f}" for h in heads)
            v = " / ".join(f"{h['value_reads_earlier_bigram']:.3f}" for h in heads)
            lines.append(f"| {layer} | {k} | {v} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--hosts", type=int, nargs="+", default=[2, 4])
    p.add_argument("--rows", type=int, default=256)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--variants", nargs="*", default=list(VARIANTS))
    p.add_argument("--passing-divisor", type=int, default=8)
    p.add_argument("--seed", type=int, default=1000, help="rows of seed + H (run.py's: 1000)")
    p.add_argument("--held-out-seed", type=int, default=3000, help="also run HELD_OUT on these rows")
    p.add_argument("--no-held-out", action="store_true")
    p.add_argument("--out", default=None, help="a JSON file instead of benchmarks/results/apb_diagnose.*")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    model = load_backbone(load_recipe(RECIPES / "apb_backbone_tiny.yaml"))
    started = time.perf_counter()
    result: dict[str, Any] = {
        "benchmark": "apb_diagnose",
        "rows": args.rows,
        "passing_divisor": args.passing_divisor,
        "benchmark_seed": args.seed,
        "heads": {"answer": ROW_HEADS["apb_answer_heads"], "readers": HEADS["repeated_pair"]},
        "runs": [],
    }
    plan = [(args.seed, args.variants)]
    if not args.no_held_out:
        plan.append((args.held_out_seed, HELD_OUT))
    for seed, names in plan:
        for hosts in args.hosts:
            result["runs"].append(
                {"seed": seed, "hosts": hosts, "cell": run_rows(model, hosts, seed, names, args)}
            )
    result["seconds"] = time.perf_counter() - started
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))
        return 0
    from benchmarks.common import machine_info, write_results

    result["machine"] = machine_info()
    write_results("apb_diagnose", result, markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
