"""APB vs Ring vs Star prefill time on GPUs: NCCL, one process per GPU (issue 13, item 4).

A Llama-3.2-1B-shaped decoder (16 layers, dim 2048, 32 query / 8 KV heads, head_dim 64, FFN 8192, bf16)
with random weights and random retaining heads: this measures time and bytes, not accuracy (accuracy is
benchmarks/apb/run.py on the trained CPU backbone). For each context length, every method prefills the
context split over the H GPUs and decodes a 64-token query Star-style; the median of --repeats prefill times
(max over ranks, after a barrier), bytes received per host per layer (counted collectives), attention pairs
and FFN tokens per host.

    python benchmarks/gpu/apb.py --nproc 8                  # on an 8-GPU machine (starts torchrun)
    python benchmarks/gpu/apb.py --dry-run                  # CPU check: 1 gloo rank, tiny model
Writes benchmarks/results/apb_gpu.{json,md} (the --dry-run writes nothing).
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a plain script from anywhere

from benchmarks.common import machine_info, write_results  # noqa: E402
from densa.longctx.apb import SequenceParallelSession, SPConfig, gather_counters  # noqa: E402
from densa.models import ModelConfig, Transformer  # noqa: E402
from densa.retaining_heads import RetainingHeads  # noqa: E402

METHODS = {"ring": SPConfig("ring"), "star": SPConfig("star"), "apb": SPConfig("apb")}
LLAMA_1B = dict(
    vocab_size=32000, dim=2048, n_layers=16, n_heads=32, n_kv_heads=8, ffn_dim=8192, max_seq_len=1 << 18
)
TINY = dict(vocab_size=128, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64, max_seq_len=1024)


def measure(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> list[dict]:
    torch.manual_seed(0)
    config = ModelConfig(**(TINY if args.dry_run else LLAMA_1B))
    model = Transformer(config).to(device, dtype).eval()
    heads = RetainingHeads(config, hidden=64 if args.dry_run else 1024).to(device, dtype)
    rank, world = dist.get_rank(), dist.get_world_size()
    rows = []
    for length in args.lengths:
        gen = torch.Generator().manual_seed(length)
        context = torch.randint(0, config.vocab_size, (1, length), generator=gen).to(device)
        query = torch.randint(0, config.vocab_size, (1, args.query), generator=gen).to(device)
        for name, cfg in METHODS.items():
            times = []
            for _ in range(args.repeats):
                session = SequenceParallelSession(model, cfg, heads=heads if cfg.method == "apb" else None)
                dist.barrier()
                start = time.perf_counter()
                session.prefill(context, query)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                dist.barrier()
                times.append(time.perf_counter() - start)
                session.decode(query)
            hosts = gather_counters(session)
            if rank == 0:
                recv = max(x["prefill"]["received"] for h in hosts for x in h["bytes_per_layer"])
                row = {
                    "length": length,
                    "hosts": world,
                    "method": name,
                    "prefill_seconds_median": statistics.median(times),
                    "prefill_seconds": times,
                    "max_bytes_received_per_layer": recv,
                    "max_attention_pairs_per_layer": max(
                        h["attention_pairs_per_layer"]["prefill"][0] for h in hosts
                    ),
                    "max_ffn_tokens": max(h["ffn_tokens"]["prefill"] for h in hosts),
                }
                print(
                    f"N={length} H={world} {name}: {row['prefill_seconds_median']:.3f} s, {recv} B/layer",
                    flush=True,
                )
                rows.append(row)
    return rows


def markdown(payload: dict) -> str:
    lines = [
        "# APB vs Ring vs Star prefill on GPUs",
        "",
        f"{payload['config']['model']}, bf16, random weights; {payload['config']['hosts']} × "
        f"{payload['machine'].get('cuda_device')}, NCCL. Median of {payload['config']['repeats']} prefills.",
        "",
        "| context | method | prefill s | MiB recv. / layer (max host) | pairs / layer (max host) | FFN |",
        "|---|---|---|---|---|---|",
    ]
    for r in payload["results"]:
        lines.append(
            f"| {r['length']} | {r['method']} | {r['prefill_seconds_median']:.3f} |"
            f" {r['max_bytes_received_per_layer'] / 2**20:.1f} | {r['max_attention_pairs_per_layer']} |"
            f" {r['max_ffn_tokens']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nproc", type=int, default=None, help="GPUs (ranks) to start with torchrun")
    p.add_argument("--lengths", type=int, nargs="+", default=[32768, 65536])
    p.add_argument("--query", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dry-run", action="store_true", help="one gloo rank on the CPU, tiny model, no files")
    args = p.parse_args(argv)
    if args.dry_run:
        args.lengths, args.query, args.repeats = [64], 8, 1
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
        dist.init_process_group("gloo", rank=0, world_size=1)
        try:
            rows = measure(args, torch.device("cpu"), torch.float32)
        finally:
            dist.destroy_process_group()
        print(f"dry run: {len(rows)} rows, methods {sorted({r['method'] for r in rows})}")
        return 0
    if "WORLD_SIZE" not in os.environ:  # start one rank per GPU
        nproc = args.nproc or torch.cuda.device_count()
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
        return subprocess.call([*cmd, __file__, *(argv if argv is not None else sys.argv[1:])])
    local = int(os.environ["LOCAL_RANK"])
    device = torch.device(f"cuda:{local}")
    torch.cuda.set_device(device)
    dist.init_process_group("nccl", timeout=datetime.timedelta(seconds=600))
    try:
        rows = measure(args, device, torch.bfloat16)
        if dist.get_rank() == 0:
            payload = {
                "benchmark": "apb_gpu",
                "config": {
                    "model": "Llama-3.2-1B shape " + str(LLAMA_1B),
                    "hosts": dist.get_world_size(),
                    "lengths": args.lengths,
                    "query": args.query,
                    "repeats": args.repeats,
                },
                "machine": machine_info(),
                "results": rows,
            }
            write_results("apb_gpu", payload, markdown(payload))
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
