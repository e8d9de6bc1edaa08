"""MoE decode on a GPU: the Triton expert path vs the reference MoE layer vs the dense cuBLAS FFN (issue 19,
items 2 and 6).

The FFN layer of benchmarks/moe_decode/run.py (d = 2048, d_ff = 8192, ReLU, E = 16 experts of 512, top-4:
k/E = 1/4, random weights and centroid router) in bf16 on CUDA, at batch 1 and 16 decode tokens:
- dense: `FeedForward` (two cuBLAS GEMMs over all 8192 neurons);
- moe_reference: `MoEFeedForward` (router + grouped matmuls over the selected experts);
- moe_kernel: `densa.inference.moe_path.MoEDecodeFFN` (router + `ExpertKernel`): the Triton sparse-FFN
  kernels reading only the chosen experts' rows when all tokens chose one expert set (batch 1), else the
  torch per-expert path; the path taken is recorded.
--layers distinct layers are cycled so weights come from HBM as in a decode step; CUDA-event times of the
three paths interleaved call by call, medians of --repeats. The kernel output is checked against the
reference on the same inputs before timing.

    python benchmarks/moe_decode/gpu.py             # on a GPU: writes benchmarks/results/moe_decode_gpu.*
    python benchmarks/moe_decode/gpu.py --dry-run   # CPU check: small shape, fp32, no files
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a plain script from anywhere

from benchmarks.common import machine_info, write_results  # noqa: E402
from benchmarks.moe_decode.run import ffn_layers  # noqa: E402
from densa.inference.moe_path import MoEDecodeFFN  # noqa: E402
from densa.kernels.timing import device_name, time_interleaved_device  # noqa: E402

PATHS = ("dense", "moe_reference", "moe_kernel")


def layers(
    dim: int, ffn_dim: int, experts: int, top_k: int, n: int, device: torch.device, dtype: torch.dtype
) -> list[dict[str, Any]]:
    """run.py's layers (seed 0) on `device` in `dtype`; the kernel path is built after the move."""
    out = []
    for layer in ffn_layers(dim, ffn_dim, experts, top_k, n, seed=0):
        moe = layer["moe_reference"].to(device, dtype)
        dense = layer["dense"].to(device, dtype)  # MoEFeedForward views the dense weights: move both
        out.append({"dense": dense, "moe_reference": moe, "moe_kernel": MoEDecodeFFN(moe)})
    return out


@torch.no_grad()
def bench(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> list[dict[str, Any]]:
    stack = layers(args.dim, args.ffn_dim, args.experts, args.top_k, args.layers, device, dtype)
    rows = []
    for batch in args.batches:
        x = torch.randn(batch, 1, args.dim, generator=torch.Generator().manual_seed(batch)).to(device, dtype)
        ref = stack[0]["moe_reference"](x).float()
        got = stack[0]["moe_kernel"](x).float()
        path = stack[0]["moe_kernel"].kernel.last_path
        rel_err = float((got - ref).abs().max() / ref.abs().max())
        if rel_err > args.tolerance:
            raise SystemExit(f"batch {batch}: kernel path {path} differs from the reference by {rel_err:.3g}")
        fns = {name: (lambda name=name, x=x: [layer[name](x) for layer in stack]) for name in PATHS}
        times = time_interleaved_device(fns, args.repeats, device)
        ms = {name: statistics.median(ts) / len(stack) * 1e3 for name, ts in times.items()}
        rows.append(
            {
                "batch": batch,
                "kernel_path": path,
                "max_rel_err_vs_reference": rel_err,
                "ms_per_layer": ms,
                "speedup_vs_dense": {name: ms["dense"] / ms[name] for name in PATHS},
            }
        )
        print(f"batch {batch} ({path}): " + ", ".join(f"{n} {ms[n]:.4f} ms" for n in PATHS), flush=True)
    return rows


def markdown(payload: dict[str, Any]) -> str:
    c = payload["config"]
    lines = [
        f"# MoE decode on {payload['device']}",
        "",
        f"FFN layer d = {c['dim']}, d_ff = {c['ffn_dim']}, {c['experts']} experts, top-{c['top_k']}, "
        f"{payload['dtype']}, {c['layers']} layers cycled, median of {c['repeats']} interleaved CUDA-event "
        "times per layer.",
        "",
        "| batch | kernel path | dense ms | reference MoE ms | kernel MoE ms | kernel vs dense | max rel"
        " err |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in payload["rows"]:
        ms = r["ms_per_layer"]
        lines.append(
            f"| {r['batch']} | {r['kernel_path']} | {ms['dense']:.4f} | {ms['moe_reference']:.4f} |"
            f" {ms['moe_kernel']:.4f} | {r['speedup_vs_dense']['moe_kernel']:.2f}x |"
            f" {r['max_rel_err_vs_reference']:.2g} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    p.add_argument("--layers", type=int, default=8, help="distinct layers cycled")
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--tolerance", type=float, default=2e-2, help="max relative error vs the reference")
    p.add_argument("--dry-run", action="store_true", help="small shape on the CPU in fp32, no files")
    args = p.parse_args(argv)
    args.dim, args.ffn_dim, args.experts, args.top_k = 2048, 8192, 16, 4
    if args.dry_run:
        args.dim, args.ffn_dim, args.layers, args.repeats, args.tolerance = 128, 512, 2, 2, 1e-4
        device, dtype = torch.device("cpu"), torch.float32
    elif not torch.cuda.is_available():
        sys.exit("no CUDA device: run on a GPU machine (or --dry-run to check the script on the CPU)")
    else:
        device, dtype = torch.device("cuda"), torch.bfloat16
    rows = bench(args, device, dtype)
    payload = {
        "benchmark": "moe_decode_gpu",
        "device": device_name(device),
        "dtype": str(dtype).removeprefix("torch."),
        "config": {k: v for k, v in vars(args).items() if k != "dry_run"},
        "machine": machine_info(),
        "rows": rows,
    }
    md = markdown(payload)
    print(md)
    if args.dry_run:
        print(f"dry run: {len(rows)} batches, kernel paths {[r['kernel_path'] for r in rows]}")
        return 0
    print("wrote", *write_results("moe_decode_gpu", payload, md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
