"""GPU decode time of the Triton sparse-FFN kernels vs the dense cuBLAS FFN, as speedup and fraction of bound.

Gated SiLU FFN, neuron i active when |silu(gate_i)| > t (t = the s-quantile), s in {0, 0.5, 0.8, 0.9, 0.95}.
Variants (per layer, layers cycled so weights come from HBM as in a real decode step):
- dense: F.linear(x, W_gate_up) -> silu(g) * u -> F.linear(., W_down) (cuBLAS);
- triton_thr: exact threshold, gate rows dense in-kernel, up/down rows of active neurons only
  (bound 3 / (1 + 2(1-s)));
- triton_idx: the active set given (a free, perfect predictor), all three sparse (bound 1 / (1-s));
- triton_idx_loop: the same with the atomic-free loop variant of the down kernel (split_k=1).
Each configuration is first checked against the fp64 dense masked reference.

    python benchmarks/gpu/sparse_ffn_triton.py --quick     # < 2 min: LLaMA-2-7B shape, bf16, batch 1
    python benchmarks/gpu/sparse_ffn_triton.py             # both shapes, bf16 + fp16, batch 1 and 4
    TRITON_INTERPRET=1 python benchmarks/gpu/sparse_ffn_triton.py --smoke   # CPU check of this script
Writes benchmarks/results/sparse_ffn_triton_gpu.{json,md} (the --smoke run writes nothing).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a plain script from anywhere

from benchmarks.common import machine_info, median, write_results  # noqa: E402
from densa.kernels import SparseFFNWeights, choose_backend, sparse_ffn, sparse_ffn_reference  # noqa: E402
from densa.kernels.timing import device_name, time_interleaved_device  # noqa: E402
from densa.kernels.triton_ffn import KernelConfig  # noqa: E402

SPARSITIES = (0.0, 0.5, 0.8, 0.9, 0.95)
SHAPES = {"llama2-7b": (4096, 11008), "llama3-8b": (4096, 14336)}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def gap_threshold(act: torch.Tensor, s: float) -> float:
    """About the s-quantile of |act|, placed in the widest nearby gap so rounding cannot flip a neuron."""
    if s == 0:
        return -1.0
    v = act.abs().flatten().double().sort().values.cpu()
    k, win = int(s * v.numel()), max(2, v.numel() // 200)
    lo, hi = max(0, k - win), min(v.numel() - 1, k + win)
    j = lo + int((v[lo + 1 : hi + 1] - v[lo:hi]).argmax())
    return float(v[j] + v[j + 1]) / 2


def _variants(x: torch.Tensor) -> dict[str, Callable]:
    """Functions of one layer's (gate_up, down, weights, threshold, idx)."""
    loop = KernelConfig(split_k=1)

    def dense(gate_up, down, w, t, idx):
        g, u = F.linear(x, gate_up).chunk(2, dim=-1)
        return F.linear(F.silu(g) * u, down)

    return {
        "dense": dense,
        "triton_thr": lambda g, d, w, t, idx: sparse_ffn(x, w, thresholds=t, activation="silu"),
        "triton_idx": lambda g, d, w, t, idx: sparse_ffn(x, w, active_idx=idx, activation="silu"),
        "triton_idx_loop": lambda g, d, w, t, idx: sparse_ffn(
            x, w, active_idx=idx, activation="silu", backend="triton", config=loop
        ),
    }


def _over_layers(fn: Callable, setups: list) -> Callable[[], None]:
    def run() -> None:
        for setup in setups:
            fn(*setup)

    return run


def _cell(r: dict, k: str) -> str:
    return f"{r['us_per_layer'][k]:.1f} ({r['speedup'][k]:.2f}x, {r['fraction_of_bound'][k]:.0%})"


def bench(dim: int, ffn_dim: int, dtype: torch.dtype, batch: int, layers: int, repeats: int, device) -> list:
    gen = torch.Generator(device="cpu").manual_seed(0)
    ws = []
    for _ in range(layers):
        gate_up = (torch.randn(2 * ffn_dim, dim, generator=gen) / dim**0.5).to(device, dtype)
        down = (torch.randn(dim, ffn_dim, generator=gen) / ffn_dim**0.5).to(device, dtype)
        ws.append((gate_up, down, SparseFFNWeights.from_dense(gate_up, down, gated=True)))
    x = torch.randn(batch, dim, generator=gen).to(device, dtype)
    rows = []
    for s in SPARSITIES:
        setups = []
        for gate_up, down, w in ws:
            act = F.silu(x.float() @ w.gate.float().T)
            t = gap_threshold(act, s)
            idx = (act.abs() > t).any(0).nonzero().squeeze(1).to(torch.int32)
            setups.append((gate_up, down, w, t, idx))
        _, _, w0, t0, i0 = setups[0]
        ref = sparse_ffn_reference(x.double(), w0.to(dtype=torch.float64), thresholds=t0, activation="silu")
        errs = {}
        for name, kw in (("thr", {"thresholds": t0}), ("idx", {"active_idx": i0, "thresholds": t0})):
            out = sparse_ffn(x, w0, activation="silu", **kw)
            errs[name] = float((out.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-12))

        fns = {name: _over_layers(fn, setups) for name, fn in _variants(x).items()}
        times = time_interleaved_device(fns, repeats, device)
        us = {name: 1e6 * median(ts) / layers for name, ts in times.items()}
        active = float(sum(i.numel() for *_, i in setups)) / (layers * ffn_dim)
        bounds = {
            "triton_thr": 3 / (1 + 2 * (1 - s)),
            "triton_idx": 1 / (1 - s),
            "triton_idx_loop": 1 / (1 - s),
        }
        speed = {k: us["dense"] / us[k] for k in bounds}
        rows.append(
            {"sparsity": s, "union_active_fraction": active, "us_per_layer": us, "rel_err": errs,
             "speedup": speed, "fraction_of_bound": {k: speed[k] / b for k, b in bounds.items()}}
        )  # fmt: skip
        print(f"  s={s}: " + ", ".join(f"{k} {v:.1f} us" for k, v in us.items()), flush=True)
    return rows


def markdown(runs: list[dict], device: str, repeats: int) -> str:
    lines = [
        f"# Triton sparse FFN vs dense cuBLAS on {device}",
        "",
        f"Gated SiLU, median of {repeats} interleaved repeats (CUDA events), us per layer; cells: us "
        "(speedup, fraction of bound). thr: exact threshold, gate dense (bound 3/(1+2(1-s))); idx: given "
        "active set (bound 1/(1-s)); idx_loop: atomic-free down.",
        "",
        "| shape | dtype | batch | s | union active | dense | thr | idx | idx_loop | max rel err |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        for r in run["rows"]:
            lines.append(
                f"| {run['shape']} | {run['dtype']} | {run['batch']} | {r['sparsity']} | "
                f"{r['union_active_fraction']:.2f} | {r['us_per_layer']['dense']:.1f} | "
                f"{_cell(r, 'triton_thr')} | {_cell(r, 'triton_idx')} | {_cell(r, 'triton_idx_loop')} | "
                f"{max(r['rel_err'].values()):.1e} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one shape, bf16, batch 1 (< 2 minutes)")
    parser.add_argument("--smoke", action="store_true", help="tiny shape on CPU under TRITON_INTERPRET=1")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--layers", type=int, default=4)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    if device.type == "cpu" and not args.smoke:
        sys.exit(
            "no CUDA device: run on a GPU machine (or --smoke with TRITON_INTERPRET=1 to check the script)"
        )
    shapes = {"smoke": (64, 176)} if args.smoke else SHAPES
    if args.quick or args.smoke:
        shapes, dtypes, batches = dict(list(shapes.items())[:1]), {"bf16": DTYPES["bf16"]}, (1,)
    else:
        dtypes, batches = DTYPES, (1, 4)
    if args.smoke:
        dtypes = {"fp32": torch.float32}  # the interpreter's bf16 support is partial
    repeats = args.repeats or (2 if args.smoke else 10 if args.quick else 30)
    layers = 1 if args.smoke else args.layers
    probe = torch.zeros(1, shapes[next(iter(shapes))][0], device=device, dtype=next(iter(dtypes.values())))
    probe_w = SparseFFNWeights.from_dense(
        torch.zeros(2, probe.shape[1]), torch.zeros(probe.shape[1], 1), True
    )
    if device.type == "cuda" and choose_backend(probe, probe_w.to(device, probe.dtype)) != "triton":
        sys.exit("sparse_ffn would not pick the Triton backend here (is triton importable?)")
    runs = []
    for shape, (dim, ffn_dim) in shapes.items():
        for dname, dtype in dtypes.items():
            for batch in batches:
                print(f"{shape} dim={dim} ffn_dim={ffn_dim} {dname} batch={batch}", flush=True)
                rows = bench(dim, ffn_dim, dtype, batch, layers, repeats, device)
                runs.append({"shape": shape, "dim": dim, "ffn_dim": ffn_dim, "dtype": dname, "batch": batch,
                             "rows": rows})  # fmt: skip
    name = device_name(device)
    md = markdown(runs, name, repeats)
    print(md)
    if not args.smoke:
        payload = {
            "device": name,
            "machine": machine_info(),
            "repeats": repeats,
            "layers": layers,
            "runs": runs,
        }
        print("wrote", *write_results("sparse_ffn_triton_gpu", payload, md))


if __name__ == "__main__":
    main()
