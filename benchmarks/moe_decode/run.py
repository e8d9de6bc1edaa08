"""MoE decode on the expert kernels vs the reference MoE layer vs the dense FFN (issue 19, item 2).

1. FFN layer at d = 2048, d_ff = 8192, E = 16 experts of 512, top-4 (k/E = 1/4), fp32, batch 1 and 16 decode
   tokens: the dense `FeedForward`, the reference `MoEFeedForward` (grouped matmuls) and the kernel path
   (`densa.inference.moe_path.MoEDecodeFFN`: native C on CPU, router included), plus the kernel class's torch
   path, timed interleaved call by call on the same inputs. Random weights; the router is a random centroid
   router (speed does not depend on which neurons form an expert). 2 distinct layers are cycled so weights
   come from memory as in decode. The kernel output is checked against the reference on the same inputs.
2. End to end: decode tokens/s of `InferenceEngine.generate` (greedy, batch 1; `--e2e-batches 1 16`) on
   SmolLM2-135M-Instruct (`densa data fetch-model smollm2-135m-instruct`, from the local cache) dense, and
   MoEfied (a random neuron partition by default, `--moefy-method kmeans` for balanced k-means; centroid
   router; E = 16, k = 4) through the reference MoE path and the kernel path. No SSD-trained model is used:
   this is a MoEfied SwiGLU model, measured for speed only (its MoE quality is poor).
   `--e2e-model` takes another HF / densa folder.

The machine is shared, so times are the benchmark thread's CPU time (1 thread does all the work), with
wall-clock time reported next to it; goals are judged on CPU-time median ratios measured side by side.

    python benchmarks/moe_decode/run.py [--threads 1] [--repeats 15]
    python benchmarks/moe_decode/run.py --quick    # small shapes and a tiny random model, < 1 min

Writes benchmarks/results/moe_decode{,_quick}.{json,md}.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import RESULTS_DIR, machine_info, median, time_interleaved_cpu, write_results  # noqa: E402
from densa.inference import GenerationConfig, InferenceEngine  # noqa: E402
from densa.inference.moe_path import MoEDecodeFFN  # noqa: E402
from densa.models.config import ModelConfig  # noqa: E402
from densa.models.ffn import FeedForward  # noqa: E402
from densa.models.transformer import Transformer  # noqa: E402
from densa.sparse_moe import moefy  # noqa: E402
from densa.sparse_moe.moe_ffn import MoEFeedForward  # noqa: E402
from densa.sparse_moe.router import CentroidRouter  # noqa: E402

GOALS = {1: 2.0, 16: 1.5}  # speed-up over the dense FFN at k/E = 1/4 (issue 19, item 2)
PATHS = ("dense", "moe_reference", "moe_kernel", "moe_kernel_torch")


def ffn_layers(dim: int, ffn_dim: int, experts: int, top_k: int, n: int, seed: int) -> list[dict[str, Any]]:
    torch.manual_seed(seed)
    config = ModelConfig(
        vocab_size=8, dim=dim, n_layers=1, n_heads=1, ffn_dim=ffn_dim, activation="relu", gated=False
    )
    layers = []
    for _ in range(n):
        ffn = FeedForward(config).eval()
        with torch.no_grad():
            for p in ffn.parameters():
                p.normal_(0.0, dim**-0.5)
            router = CentroidRouter(dim, experts)
            router.weight.normal_(0.0, dim**-0.5)
        moe = MoEFeedForward(ffn, experts, top_k, router).eval()
        layers.append(
            {
                "dense": ffn,
                "moe_reference": moe,
                "moe_kernel": MoEDecodeFFN(moe),
                "moe_kernel_torch": MoEDecodeFFN(moe, "torch"),
            }
        )
    return layers


def timed(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int) -> dict[str, dict[str, list[float]]]:
    """Seconds per call, interleaved: {"cpu": this thread's CPU time (all work runs on it: 1 torch/OpenMP
    thread), "wall": perf_counter}."""
    wall, cpu = time_interleaved_cpu(fns, repeats, warmup, cpu_clock=time.thread_time)
    return {"cpu": cpu, "wall": wall}


@torch.no_grad()
def bench_ffn(args: argparse.Namespace) -> list[dict[str, Any]]:
    layers = ffn_layers(args.dim, args.ffn_dim, args.experts, args.top_k, 2, seed=0)
    rows = []
    for batch in args.batches:
        x = torch.randn(batch, 1, args.dim, generator=torch.Generator().manual_seed(batch))
        ref = layers[0]["moe_reference"](x)
        got = layers[0]["moe_kernel"](x)
        assert layers[0]["moe_kernel"].kernel.last_path == "native", "the native kernels did not run"
        rel_err = float((got - ref).abs().max() / ref.abs().max())
        experts = layers[0]["moe_reference"].router(x.reshape(batch, -1)).topk(args.top_k, dim=-1).indices
        fns = {name: (lambda name=name, x=x: [layer[name](x) for layer in layers]) for name in PATHS}
        times = timed(fns, repeats=args.repeats, warmup=2)
        ms = {k: {n: [t / len(layers) * 1e3 for t in ts] for n, ts in v.items()} for k, v in times.items()}
        cpu = {n: median(ts) for n, ts in ms["cpu"].items()}
        wall = {n: median(ts) for n, ts in ms["wall"].items()}
        rows.append(
            {
                "batch": batch,
                "experts_used": int(experts.unique().numel()),
                "max_rel_err_vs_reference": rel_err,
                "cpu_ms": cpu,
                "wall_ms": wall,
                "speedup_vs_dense": {n: cpu["dense"] / cpu[n] for n in PATHS},
                "speedup_vs_dense_wall": {n: wall["dense"] / wall[n] for n in PATHS},
                "times_ms": ms,
            }
        )
        print(f"batch {batch}: " + ", ".join(f"{n} {cpu[n]:.2f} ms" for n in PATHS), flush=True)
    return rows


def e2e_models(args: argparse.Namespace, folder: str | None = None) -> tuple[str, Transformer]:
    from densa.data.fetch_models import SMOLLM2, fetch_model
    from densa.train.finetune import load_model

    if folder is not None:  # a densa run or checkpoint folder (the SSD-trained model)
        return f"{folder} (MoEfied here)", load_model(folder).eval()
    if args.quick:
        torch.manual_seed(0)
        config = ModelConfig(
            vocab_size=512, dim=128, n_layers=2, n_heads=4, ffn_dim=512, activation="relu", gated=False
        )
        return "tiny random ReLU model (quick mode)", Transformer(config).eval()
    path = Path(args.e2e_model) if args.e2e_model else fetch_model(SMOLLM2)
    return f"{path.name} (MoEfied here)", load_model(path).eval()


@torch.no_grad()
def bench_e2e(
    args: argparse.Namespace, folder: str | None = None, method: str | None = None
) -> dict[str, Any]:
    label, dense = e2e_models(args, folder)
    method = method or args.moefy_method
    start = time.perf_counter()
    moe = copy.deepcopy(dense)
    moefy(moe, args.experts, args.top_k, method=method)
    moefy_s = time.perf_counter() - start
    dense_run, moe_run = InferenceEngine(dense).generate, InferenceEngine(moe).generate
    config = GenerationConfig(max_new_tokens=args.new_tokens, stop_at_eos=False)
    vocab = dense.config.vocab_size
    out: dict[str, Any] = {
        "model": label,
        "config": dense.config.to_dict() if hasattr(dense.config, "to_dict") else str(dense.config),
        "moefy_s": moefy_s,
        "moefy_method": method,
        "batches": [],
    }
    prefill = GenerationConfig(max_new_tokens=1, stop_at_eos=False)
    for batch in args.e2e_batches:
        gen = torch.Generator().manual_seed(batch)
        prompts = torch.randint(3, vocab, (batch, args.prompt_len), generator=gen).tolist()
        runs = {"dense": (dense_run, {}), "moe_reference": (moe_run, {"moe_backend": "reference"})}
        runs["moe_kernel"] = (moe_run, {})
        kernel_ids = [g.token_ids for g in moe_run(prompts, config).generations]
        same = kernel_ids == [
            g.token_ids for g in moe_run(prompts, config, moe_backend="reference").generations
        ]
        fns = {}
        for name, (run, kw) in runs.items():
            fns[name] = lambda run=run, kw=kw, p=prompts: run(p, config, **kw)
            fns[name + "/prefill"] = lambda run=run, kw=kw, p=prompts: run(p, prefill, **kw)
        times = timed(fns, repeats=args.e2e_repeats, warmup=1)
        tokens = batch * (args.new_tokens - 1)  # decode steps after the prefill's first token
        tps = {}
        for kind in ("cpu", "wall"):
            t = {n: median(ts) for n, ts in times[kind].items()}
            tps[kind] = {n: tokens / (t[n] - t[n + "/prefill"]) for n in runs}
        out["batches"].append(
            {
                "batch": batch,
                "greedy_kernel_equals_reference": same,
                "decode_tokens_per_s": tps["cpu"],
                "decode_tokens_per_s_wall": tps["wall"],
                "speedup_vs_dense": {n: tps["cpu"][n] / tps["cpu"]["dense"] for n in runs},
                "speedup_vs_dense_wall": {n: tps["wall"][n] / tps["wall"]["dense"] for n in runs},
                "times_s": times,
            }
        )
        print(
            f"e2e batch {batch}: " + ", ".join(f"{n} {v:.1f} tok/s" for n, v in tps["cpu"].items()),
            flush=True,
        )
    return out


def _ffn_table(payload: dict[str, Any]) -> list[str]:
    lines = [
        "| batch | experts used | dense | MoE reference | MoE kernel | kernel, torch path "
        "| kernel vs dense | goal | met | max rel. error vs reference |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    for r in payload["ffn"]:
        c, w, s, sw = r["cpu_ms"], r["wall_ms"], r["speedup_vs_dense"], r["speedup_vs_dense_wall"]
        cells = [f"{c[n]:.2f} ({w[n]:.1f})" for n in PATHS]
        goal = GOALS.get(r["batch"])
        met = "—" if goal is None else ("yes" if s["moe_kernel"] >= goal else "**no**")
        speed = f"**{s['moe_kernel']:.2f}x** ({sw['moe_kernel']:.2f}x)"
        target = "" if goal is None else f"{goal}x"
        lines.append(
            f"| {r['batch']} | {r['experts_used']} | {' | '.join(cells)} | {speed} | {target} | {met} "
            f"| {r['max_rel_err_vs_reference']:.1e} |"
        )
    return lines


def _e2e_table(e2e: dict[str, Any]) -> list[str]:
    lines = [
        "| batch | dense tok/s | MoE reference tok/s | MoE kernel tok/s | kernel vs dense "
        "| reference vs dense | kernel greedy = reference |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in e2e["batches"]:
        t, w = r["decode_tokens_per_s"], r["decode_tokens_per_s_wall"]
        s, sw = r["speedup_vs_dense"], r["speedup_vs_dense_wall"]
        cells = [f"{t[n]:.1f} ({w[n]:.1f})" for n in ("dense", "moe_reference", "moe_kernel")]
        same = "yes" if r["greedy_kernel_equals_reference"] else "**no**"
        lines.append(
            f"| {r['batch']} | {' | '.join(cells)} | **{s['moe_kernel']:.2f}x** ({sw['moe_kernel']:.2f}x) "
            f"| {s['moe_reference']:.2f}x ({sw['moe_reference']:.2f}x) | {same} |"
        )
    return lines


def markdown(payload: dict[str, Any]) -> str:
    a, f, e = payload["config"], payload["ffn_config"], payload["e2e"]
    quick = " (quick)" if a["quick"] else ""
    threads = payload["machine"]["torch_threads"]
    lines = [
        f"# MoE decode: expert kernels vs reference MoE vs dense FFN{quick}",
        "",
        f"fp32, CPU, {threads} thread(s) (x86_64, 2 cores shared with a training run and others); "
        "paths interleaved call by call. Times are medians of the benchmark thread's CPU time (all work "
        "runs on it), wall-clock medians in brackets: the machine is shared with a training run and other "
        "jobs (load average above 10), so wall time mostly measures the scheduler. Speed-ups are ratios of "
        "CPU-time medians (wall-clock ratios in brackets). `python benchmarks/moe_decode/run.py`.",
        "",
        f"## FFN layer: d = {f['dim']}, d_ff = {f['ffn_dim']}, plain ReLU, E = {f['experts']}, "
        f"top-{f['top_k']} (k/E = {f['top_k'] / f['experts']:.2f})",
        "",
        f"ms per layer: CPU-time median (wall median) of {f['repeats']}; router, top-k and combine "
        "included in both MoE paths. `MoE kernel`: densa.inference.moe_path (native C kernel); "
        "`kernel, torch path`: the same class on its torch path. Random weights, random centroid router.",
        "",
        *_ffn_table(payload),
        "",
    ]
    if e is None:
        return "\n".join([*lines, "End to end: not run yet."]) + "\n"
    for e2e, title in ((e, "End to end"), (payload.get("e2e_ssd"), "End to end, the SSD-trained model")):
        if e2e is None:
            continue
        partition = e2e.get("moefy_method", a["moefy_method"])
        lines += [
            f"## {title}: {e2e['model']}, {partition} partition, E = {a['experts']}, top-{a['top_k']}",
            "",
            f"`InferenceEngine.generate`, greedy, prompts of {a['prompt_len']} random tokens, "
            f"{a['new_tokens']} new tokens; decode tokens/s from CPU-time (wall) medians of "
            f"{a['e2e_repeats']} calls, a prefill-only call (1 new token) subtracted; MoEfication took "
            f"{e2e['moefy_s']:.0f} s (wall).",
            "",
            *_e2e_table(e2e),
            "",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--e2e-repeats", type=int, default=3)
    parser.add_argument(
        "--e2e-model", default=None, help="HF or densa folder (default: SmolLM2-135M-Instruct)"
    )
    parser.add_argument("--e2e-batches", type=int, nargs="+", default=[1], help="default: %(default)s")
    parser.add_argument("--new-tokens", type=int, default=17, help="default: %(default)s")
    parser.add_argument(
        "--moefy-method",
        default="random",
        help="MoEfication partition (default: %(default)s: decode speed does not depend on which neurons "
        "form an expert, and k-means on 30 layers costs minutes on a loaded machine)",
    )
    parser.add_argument(
        "--reuse-ffn", action="store_true", help="keep the FFN-layer part of the existing results JSON"
    )
    parser.add_argument(
        "--reuse-e2e", action="store_true", help="keep the end-to-end part of the existing results JSON"
    )
    parser.add_argument(
        "--ssd-model",
        default=None,
        help="also run end to end on this densa folder (benchmarks/ssd's SSD-trained model), k-means MoEfied",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    big = not args.quick
    args.dim, args.ffn_dim = (2048, 8192) if big else (256, 1024)
    args.experts, args.top_k = 16, 4
    args.batches = [1, 16]
    args.prompt_len = 32 if big else 8
    if args.quick:
        args.repeats, args.e2e_repeats, args.new_tokens, args.e2e_batches = 3, 2, 9, [1, 16]
    name = "moe_decode" + ("_quick" if args.quick else "")
    previous = RESULTS_DIR / f"{name}.json"
    if args.reuse_ffn:
        old = json.loads(previous.read_text())
        ffn, ffn_config = old["ffn"], old.get("ffn_config", old["config"])
    else:
        ffn, ffn_config = bench_ffn(args), vars(args).copy()
    payload = {
        "config": vars(args),
        "machine": machine_info(),
        "ffn_config": ffn_config,
        "ffn": ffn,
        "e2e": None,
    }
    if args.reuse_e2e:
        old = json.loads(previous.read_text())
        payload["e2e"] = old["e2e"]
        payload["config"] = old["config"] | {"ssd_model": args.ssd_model}
    else:
        write_results(name, payload, markdown(payload))  # the layer part survives a failed end-to-end run
        payload["e2e"] = bench_e2e(args)
    if args.ssd_model:
        payload["e2e_ssd"] = bench_e2e(args, args.ssd_model, method="kmeans")
    print(*write_results(name, payload, markdown(payload)), sep="\n")


if __name__ == "__main__":
    main()
