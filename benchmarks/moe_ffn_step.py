"""FFN forward + backward time of the sparse MoE view (densa.sparse_moe) at k/E = 1, 1/2, 1/4, 1/8 vs dense.

Claim under test: the MoE computes only the selected experts, forward and backward, so its step time
falls with k/E (SSD's sparse phase saves compute). Same weights, same input, fp32 CPU; the router is the
centroid router of a balanced k-means split (realistic, slightly unbalanced loads: reported as max/mean).
Timed interleaved; medians of `--repeats` runs; speed-up = dense median / MoE median. At k/E = 1/4 the
expert-execution strategies densa does not use (benchmarks/moe_ffn_alternatives.py: a per-expert torch.mm
loop, experts padded to a capacity and one torch.bmm) are timed in the same rounds, with their largest
difference from the MoE's output and gradients.

    python -m benchmarks.moe_ffn_step [--repeats 7] [--tokens 2048] [--threads 1]

One thread by default: on a shared 2-core machine, multi-threaded small per-expert GEMMs stall on
thread hand-offs whenever other jobs hold a core (measured 14 ms vs 0.4 ms for one 256x256x64 matmul),
which measures the machine's load, not the method.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable

import torch

from benchmarks.common import machine_info, median, time_interleaved_cpu, write_results
from benchmarks.moe_ffn_alternatives import ALTERNATIVES
from densa.models import ModelConfig
from densa.models.ffn import FeedForward
from densa.sparse_moe import CentroidRouter, MoEFeedForward, cluster_ffn
from densa.sparse_moe.switching import permute_ffn_

SHAPES = {
    "relu d256 f1024 E16": dict(dim=256, ffn_dim=1024, gated=False, activation="relu", experts=16),
    "swiglu d512 f2048 E16": dict(dim=512, ffn_dim=2048, gated=True, activation="silu", experts=16),
}
FRACTIONS = (1.0, 0.5, 0.25, 0.125)
Expert = Callable[[MoEFeedForward, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def bench_shape(name: str, tokens: int, repeats: int) -> dict:
    s = SHAPES[name]
    torch.manual_seed(0)
    config = ModelConfig(
        vocab_size=8,
        dim=s["dim"],
        n_layers=1,
        n_heads=4,
        ffn_dim=s["ffn_dim"],
        gated=s["gated"],
        activation=s["activation"],
    )
    ffn = FeedForward(config)
    clustering = cluster_ffn(ffn, s["experts"])
    permute_ffn_(ffn, torch.sort(clustering.labels, stable=True).indices)
    x = torch.randn(tokens, s["dim"], requires_grad=True)
    grad = torch.randn(tokens, s["dim"])

    def step(module: torch.nn.Module, fn: Expert | None = None) -> list[torch.Tensor]:
        out = module(x) if fn is None else routed(module, x, fn)
        out.backward(grad)
        got = [out.detach(), x.grad] + [p.grad for p in module.parameters()]
        x.grad = None
        for p in module.parameters():
            p.grad = None
        return got

    fns = {"dense": lambda: step(ffn)}
    moes = {}
    for frac in FRACTIONS:
        k = max(1, round(frac * s["experts"]))
        router = CentroidRouter.from_clustering(clustering)
        moes[k] = MoEFeedForward(ffn, s["experts"], k, router)
        fns[f"k={k}"] = lambda m=moes[k]: step(m)
    quarter = moes[s["experts"] // 4]
    for alt, fn in ALTERNATIVES.items():
        fns[alt] = lambda fn=fn: step(quarter, fn)
    times, cpu = time_interleaved_cpu(fns, repeats)
    dense, dense_cpu = median(times["dense"]), median(cpu["dense"])
    alternatives = []
    want = step(quarter)
    for alt, fn in ALTERNATIVES.items():
        diff = max(float((a - b).abs().max()) for a, b in zip(step(quarter, fn), want, strict=True))
        t = median(times[alt])
        alternatives.append(
            {
                "strategy": alt,
                "k": quarter.top_k,
                "median_s": t,
                "speedup_vs_dense": dense / t,
                "cpu_speedup_vs_dense": dense_cpu / median(cpu[alt]),
                "max_abs_diff_vs_moe": diff,
            }
        )
    rows = []
    for k, moe in moes.items():
        moe.pop_load()
        step(moe)
        load = moe.pop_load()
        t = median(times[f"k={k}"])
        rows.append(
            {
                "k": k,
                "k_over_E": k / s["experts"],
                "median_s": t,
                "speedup_vs_dense": dense / t,
                "cpu_speedup_vs_dense": dense_cpu / median(cpu[f"k={k}"]),
                "ideal_speedup": s["experts"] / k,
                "load_max_over_mean": float(load.max() / load.mean()),
            }
        )
    return {
        "shape": name,
        **s,
        "tokens": tokens,
        "dense_median_s": dense,
        "moe": rows,
        "alternatives_at_quarter": alternatives,
        "times": times,
        "cpu_times": cpu,
    }


def routed(moe: MoEFeedForward, x: torch.Tensor, fn: Expert) -> torch.Tensor:
    """`moe`'s forward with its expert execution replaced by `fn` (same routing and weights)."""
    top, experts = moe.router(x.detach()).topk(moe.top_k, dim=-1)
    return fn(moe, x, experts, torch.softmax(top, dim=-1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: robust on a shared CPU)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    results = [bench_shape(name, args.tokens, args.repeats) for name in SHAPES]
    load_after = os.getloadavg()[0]
    lines = [
        "# MoE FFN step (forward + backward) vs dense, CPU fp32",
        "",
        f"{args.tokens} tokens, median of {args.repeats} interleaved runs; speed-up = dense / MoE, by wall"
        " time and by process CPU time (which leaves out time other jobs held the core).",
        "",
        "| shape | k/E | k | dense (ms) | MoE (ms) | speed-up | speed-up (CPU time) | ideal E/k |"
        " load max/mean |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        for row in r["moe"]:
            lines.append(
                f"| {r['shape']} | {row['k_over_E']:.3g} | {row['k']} | {r['dense_median_s'] * 1e3:.1f} |"
                f" {row['median_s'] * 1e3:.1f} | {row['speedup_vs_dense']:.2f}x |"
                f" {row['cpu_speedup_vs_dense']:.2f}x | {row['ideal_speedup']:.0f}x |"
                f" {row['load_max_over_mean']:.2f} |"
            )
    lines += [
        "",
        "Expert execution strategies at k/E = 1/4, timed in the same rounds (speed-up vs the same dense;"
        " max |diff| = largest difference from the MoE's output and gradients):",
        "",
        "| shape | strategy | ms | speed-up | speed-up (CPU time) | max abs diff |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        quarter = next(row for row in r["moe"] if row["k_over_E"] == 0.25)
        lines.append(
            f"| {r['shape']} | grouped_mm (densa) | {quarter['median_s'] * 1e3:.1f} |"
            f" {quarter['speedup_vs_dense']:.2f}x | {quarter['cpu_speedup_vs_dense']:.2f}x | 0 |"
        )
        for a in r["alternatives_at_quarter"]:
            lines.append(
                f"| {r['shape']} | {a['strategy']} | {a['median_s'] * 1e3:.1f} |"
                f" {a['speedup_vs_dense']:.2f}x | {a['cpu_speedup_vs_dense']:.2f}x |"
                f" {a['max_abs_diff_vs_moe']:.2g} |"
            )
    machine = machine_info()
    lines += [
        "",
        f"Machine: {machine['processor']}, {machine['cpu_count']} CPUs, torch {machine['torch']}"
        f" ({machine['torch_threads']} threads); 1-minute load average {load_before:.1f} before,"
        f" {load_after:.1f} after.",
        "",
    ]
    payload = {
        "config": {"tokens": args.tokens, "repeats": args.repeats},
        "load_average_1min": {"before": load_before, "after": load_after},
        "machine": machine,
        "results": results,
    }
    json_path, md_path = write_results("moe_ffn_step", payload, "\n".join(lines))
    print("\n".join(lines))
    print(f"wrote {json_path} and {md_path}")


if __name__ == "__main__":
    main()
