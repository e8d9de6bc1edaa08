"""CPU decode (batch 1) time of the CPU sparse FFN path vs the dense FFN, as speedup and fraction of bound.

Gated SiLU FFN (LLaMA-like shape), fp32, neuron i active when |silu(gate_i)| > t with t the s-quantile,
s in {0, 0.5, 0.8, 0.9, 0.95}. Timed variants, interleaved, per layer:
- dense: the model's math, x @ W_gate_up^T -> silu(g) * u -> @ W_down^T;
- sparse_thr: exact threshold, gate dense, up + down rows of the active set (bound 3 / (1 + 2(1-s)));
- sparse_idx: the active set given (a free, perfect predictor), all three sparse (bound 1 / (1-s));
- both again with the native CPU kernels switched off (`native_cpu.disabled()`: torch gathers);
- down projection alone, to show the layout rule (bound 1 / (1-s)): dense matvec, contiguous rows of the
  transposed W_down (native kernel, embedding_bag, and index_select + matmul), and the strided column
  gather W_down[:, idx] from the row-major weight.
Weights of `--layers` distinct layers are cycled so the working set exceeds the last-level cache, as in a
real decode step, where every layer's weights are read once per token.

    python -m benchmarks.sparse_ffn_kernels [--dim 2048] [--ffn-dim 5632] [--layers 8] [--repeats 15]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
import torch.nn.functional as F

from benchmarks.common import machine_info, median, time_interleaved, write_results
from densa.kernels import SparseFFNWeights, gather_down, native_cpu, sparse_ffn_reference, sparse_ffn_torch

SPARSITIES = (0.0, 0.5, 0.8, 0.9, 0.95)


def make_layers(n: int, dim: int, ffn_dim: int) -> list[tuple[torch.Tensor, torch.Tensor, SparseFFNWeights]]:
    layers = []
    for _ in range(n):
        gate_up, down = torch.randn(2 * ffn_dim, dim) / dim**0.5, torch.randn(dim, ffn_dim) / ffn_dim**0.5
        layers.append((gate_up, down, SparseFFNWeights.from_dense(gate_up, down, gated=True)))
    return layers


def bench_sparsity(layers: list, x: torch.Tensor, s: float, repeats: int) -> dict[str, float]:
    """Median ms per layer of every variant at sparsity s."""
    setups = []
    for gate_up, down, w in layers:
        act = F.silu(x @ w.gate.T)
        t = -1.0 if s == 0 else float(torch.quantile(act.abs().flatten(), s))
        idx = (act.abs() > t).flatten().nonzero().squeeze(1)
        h_idx = (act * (x @ w.up.T))[0, idx].unsqueeze(0)  # the down input restricted to active rows
        h_full = torch.zeros(1, w.ffn_dim).index_copy_(1, idx, h_idx)
        setups.append((gate_up, down, w, t, idx, h_idx, h_full))
    _, _, w0, t0, i0, _, _ = setups[0]
    ref = sparse_ffn_reference(x, w0, thresholds=t0, activation="silu")
    for kwargs in ({"thresholds": t0}, {"active_idx": i0}):
        out = sparse_ffn_torch(x, w0, activation="silu", **kwargs)
        assert (out - ref).abs().max() <= 1e-4, f"sparse path ({kwargs}) disagrees with the reference"

    def dense(gate_up, down, *_):
        g, u = F.linear(x, gate_up).chunk(2, dim=-1)
        return F.linear(F.silu(g) * u, down)

    def torch_only(fn: Callable) -> Callable:
        def run(*args):
            with native_cpu.disabled():
                return fn(*args)

        return run

    variants: dict[str, Callable] = {
        "dense": dense,
        "sparse_thr": lambda g, d, w, t, *_: sparse_ffn_torch(x, w, thresholds=t, activation="silu"),
        "sparse_idx": lambda g, d, w, t, idx, *_: sparse_ffn_torch(x, w, active_idx=idx, activation="silu"),
        "sparse_thr_torch": torch_only(
            lambda g, d, w, t, *_: sparse_ffn_torch(x, w, thresholds=t, activation="silu")
        ),
        "sparse_idx_torch": torch_only(
            lambda g, d, w, t, idx, *_: sparse_ffn_torch(x, w, active_idx=idx, activation="silu")
        ),
        "down_dense": lambda g, d, w, t, idx, hi, hf: F.linear(hf, d),
        "down_rows": lambda g, d, w, t, idx, hi, hf: gather_down(hi, idx, w.down_t),
        "down_rows_eb": lambda g, d, w, t, idx, hi, hf: F.embedding_bag(
            idx.view(1, -1), w.down_t, per_sample_weights=hi.view(1, -1), mode="sum"
        ),
        "down_rows_isel": lambda g, d, w, t, idx, hi, hf: hi @ w.down_t.index_select(0, idx),
        "down_strided": lambda g, d, w, t, idx, hi, hf: hi @ d.index_select(1, idx).T,
    }

    def over_layers(fn: Callable) -> Callable[[], None]:
        def run() -> None:
            for setup in setups:
                fn(*setup)

        return run

    fns = {name: over_layers(fn) for name, fn in variants.items()}
    times = time_interleaved(fns, repeats=repeats, warmup=1)
    return {name: 1e3 * median(ts) / len(layers) for name, ts in times.items()}


def summarise(s: float, ms: dict[str, float]) -> dict:
    bound_all, bound_thr = 1 / (1 - s), 3 / (1 + 2 * (1 - s))
    row: dict = {
        "sparsity": s,
        "ms_per_layer": ms,
        "bound_all_sparse": bound_all,
        "bound_gate_dense": bound_thr,
    }
    for name, base, bound in (
        ("sparse_thr", "dense", bound_thr),
        ("sparse_idx", "dense", bound_all),
        ("sparse_thr_torch", "dense", bound_thr),
        ("sparse_idx_torch", "dense", bound_all),
        ("down_rows", "down_dense", bound_all),
        ("down_rows_eb", "down_dense", bound_all),
        ("down_rows_isel", "down_dense", bound_all),
        ("down_strided", "down_dense", bound_all),
    ):
        speedup = ms[base] / ms[name]
        row[name] = {"speedup": speedup, "fraction_of_bound": speedup / bound}
    return row


def markdown(rows: list[dict], config: dict, machine: dict) -> str:
    lines = [
        "# Sparse FFN decode on CPU (densa.kernels CPU path), batch 1",
        "",
        f"Shape dim={config['dim']}, ffn_dim={config['ffn_dim']}, gated SiLU, fp32, "
        f"{config['layers']} layers cycled; median of {config['repeats']} interleaved repeats; ms per layer. "
        f"Machine: {machine['processor']}, {machine['cpu_count']} cores (shared with other jobs: noisy), "
        f"torch {machine['torch']}, {machine['torch_threads']} threads.",
        "",
        "Full FFN. `thr`: exact threshold, gate dense (bound 3/(1+2(1-s))); `idx`: given active set, all "
        "three projections sparse (bound 1/(1-s)); `torch`: the same with the native CPU kernels switched "
        f"off (native kernels {'available' if config['native'] else 'NOT available: all torch'}). "
        "Cells: ms (speedup, fraction of bound).",
        "",
        "| s | dense ms | thr | idx | thr, torch | idx, torch |",
        "|---|---|---|---|---|---|",
    ]
    cell = lambda r, k: (
        f"{r['ms_per_layer'][k]:.2f} ({r[k]['speedup']:.2f}x, {r[k]['fraction_of_bound']:.0%})"
    )
    for r in rows:
        lines.append(f"| {r['sparsity']} | {r['ms_per_layer']['dense']:.2f} | {cell(r, 'sparse_thr')} | "
                     f"{cell(r, 'sparse_idx')} | {cell(r, 'sparse_thr_torch')} | "
                     f"{cell(r, 'sparse_idx_torch')} |")  # fmt: skip
    lines += [
        "",
        "Down projection alone (the layout rule; bound 1/(1-s)): rows of the transposed W_down "
        "(native kernel / embedding_bag / index_select) vs the strided column gather of the row-major "
        "W_down.",
        "",
        "| s | bound | dense ms | rows (native) | rows (embedding_bag) | rows (index_select) "
        "| strided columns |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        head = f"| {r['sparsity']} | {r['bound_all_sparse']:.1f}x | {r['ms_per_layer']['down_dense']:.2f} |"
        lines.append(
            f"{head} {cell(r, 'down_rows')} | {cell(r, 'down_rows_eb')} | {cell(r, 'down_rows_isel')} | "
            f"{cell(r, 'down_strided')} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--ffn-dim", type=int, default=5632)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1, help="1 resists preemption on a shared machine")
    parser.add_argument("--no-write", action="store_true", help="print only (for quick trials)")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    config = {"dim": args.dim, "ffn_dim": args.ffn_dim, "layers": args.layers, "repeats": args.repeats}
    config["native"] = native_cpu.available()
    layers = make_layers(args.layers, args.dim, args.ffn_dim)
    x = torch.randn(1, args.dim)
    rows = []
    for s in SPARSITIES:
        rows.append(summarise(s, bench_sparsity(layers, x, s, args.repeats)))
        print(
            f"s={s}: " + ", ".join(f"{k} {v:.2f} ms" for k, v in rows[-1]["ms_per_layer"].items()), flush=True
        )
    machine = machine_info()
    md = markdown(rows, config, machine)
    print(md)
    if not args.no_write:
        payload = {"config": {**config, "activation": "silu", "gated": True, "dtype": "float32", "batch": 1}}
        payload |= {"machine": machine, "results": rows}
        print("wrote", *write_results("sparse_ffn_kernels", payload, md))


if __name__ == "__main__":
    main()
