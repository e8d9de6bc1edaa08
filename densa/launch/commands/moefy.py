"""`densa moefy CHECKPOINT --experts E [--top-k K] --out DIR`: dense checkpoint → MoE checkpoint."""

from __future__ import annotations

import argparse
import sys

SPARSE_ACTIVATIONS = ("relu", "relu2")
PPL_WARN_RATIO = 2.0
"""--eval: warn when perplexity at the chosen top-k exceeds this multiple of the dense (k = E) perplexity.
MoEfication keeps >95% of a ReLU model's quality at 10-30% of the FFN; a doubled perplexity is far off."""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "moefy",
        help="split a dense checkpoint's FFNs into experts (MoEfication) for MoE inference",
        description="Cluster every FFN's neurons into E equal experts, reorder them expert by expert, "
        "build centroid routers and write an MoE checkpoint (a densa model folder + moe.json + routers, "
        "with the source's tokenizer files). With --eval, warns when the top-k perplexity is more than "
        f"{PPL_WARN_RATIO:g}x the dense one.",
    )
    p.add_argument("checkpoint", help="densa model folder or HF folder")
    p.add_argument("--experts", type=int, required=True, help="experts per layer (must divide ffn_dim)")
    p.add_argument("--top-k", type=int, default=None, help="experts per token (default: experts / 4)")
    p.add_argument("--out", required=True, help="output folder (written atomically)")
    p.add_argument("--method", choices=["kmeans", "random", "contiguous"], default="kmeans")
    p.add_argument("--router", choices=["centroid", "mlp"], default="centroid")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--eval", metavar="PREFIX", default=None, help="tokenized .bin/.idx dataset: print PPL vs k"
    )
    p.add_argument("--eval-tokens", type=int, default=32768, help="tokens of --eval to score")
    p.add_argument("--seq-len", type=int, default=256, help="sequence length for --eval")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.set_defaults(handler=_moefy)


def _moefy(args: argparse.Namespace) -> int:
    from densa.inference import write_tokenizer
    from densa.inference.loading import find_tokenizer
    from densa.models.checkpoint_io import build_transformer
    from densa.outputs import check_destination, check_replaceable
    from densa.sparse_moe.inference import load_dense_state, moefy, perplexity_vs_top_k, save_moe

    check_destination(args.out, _sources(args))
    check_replaceable(args.out, args.overwrite)
    config, state = load_dense_state(args.checkpoint)
    tokenizer = find_tokenizer(args.checkpoint)  # carried along so `densa generate --model OUT` works
    model = build_transformer(config, state)
    top_k = args.top_k if args.top_k is not None else max(1, args.experts // 4)
    _progress(f"clustering {config.n_layers} layers into {args.experts} experts ({args.method})")
    layouts = moefy(model, args.experts, top_k, method=args.method, router=args.router, seed=args.seed)
    out = save_moe(
        args.out,
        model,
        layouts,
        router=args.router,
        method=args.method,
        overwrite=args.overwrite,
        add_files=(lambda tmp: write_tokenizer(tokenizer, tmp)) if tokenizer is not None else None,
    )
    print(
        f"wrote {out}: {config.n_layers} layers x {args.experts} experts of {config.ffn_dim // args.experts}"
        f" neurons, top-{top_k}" + ("" if tokenizer else " (no tokenizer in the source folder)")
    )
    if config.activation not in SPARSE_ACTIVATIONS:  # before any number: the likely cause of a collapse
        print(
            f"densa moefy: note: this model's {config.activation} FFN is not activation-sparse, so"
            f" top-{top_k} of {args.experts} experts may lose much of its quality"
            + ("" if args.eval else "; measure it with --eval DATA_PREFIX"),
            file=sys.stderr,
            flush=True,
        )
    if args.eval:
        sequences = _eval_sequences(args.eval, args.eval_tokens, args.seq_len)
        ks = sorted({k for k in (1, 2, 4, 8, 16, 32, 64, top_k, args.experts) if k <= args.experts})
        ppls = {}
        for k in ks:  # one k at a time: each line appears when its pass is done
            _progress(f"perplexity at top-{k} ({len(sequences)} batches)")
            ppls[k] = perplexity_vs_top_k(model, sequences, [k])[k]
            print(f"top-{k:<4d} k/E {k / args.experts:.3f}  ppl {ppls[k]:.4f}", flush=True)
        warning = quality_warning(
            ppls[top_k], ppls[args.experts], top_k, args.experts, config.activation, args.method
        )
        if warning:
            print(f"densa moefy: warning: {warning}", file=sys.stderr, flush=True)
    return 0


def quality_warning(
    ppl_k: float, ppl_dense: float, top_k: int, experts: int, activation: str, method: str = "kmeans"
) -> str | None:
    """The advice of the MoEfication notes when top-k perplexity exceeds PPL_WARN_RATIO x the dense one;
    None when it does not."""
    ratio = ppl_k / ppl_dense
    if ratio <= PPL_WARN_RATIO:
        return None
    advice = [
        f"activate more experts (--top-k {min(experts, 2 * top_k)}, or pick k from the table above)",
        "cluster into more, smaller experts (--experts)",
        "train the router on activation mass (--router mlp) instead of centroids",
    ]
    if method != "kmeans":
        advice.append(f"cluster by parameters (--method kmeans; {method} is a baseline)")
    else:  # the notes' other expert construction; densa splits by parameters only
        advice.append(
            "if k-means on weights (parameter clustering) splits badly, co-activation clustering may not"
        )
    if activation not in SPARSE_ACTIVATIONS:
        # SwiGLU/SiLU activations are not sparse: no subset of experts carries the output.
        advice.insert(
            0,
            f"this model's {activation} FFN is not activation-sparse: ReLU-fy and finetune it first "
            "(sparsity.prosparse in a recipe, docs/sparsity.md), or train with SSD (docs/ssd.md)",
        )
    return (
        f"MoEfication destroyed quality: top-{top_k} of {experts} experts gives perplexity {ppl_k:.4g}, "
        f"{ratio:.3g}x the dense model's {ppl_dense:.4g} (warning above {PPL_WARN_RATIO:g}x). "
        "To keep quality: " + "; ".join(advice) + "."
    )


def _progress(message: str) -> None:
    print(f"densa moefy: {message}", file=sys.stderr, flush=True)


def _sources(args: argparse.Namespace) -> list:
    """What `densa moefy` reads: the checkpoint folder and the --eval dataset's files."""
    from densa.data.indexed import data_paths
    from densa.outputs import Source

    found = [Source("source folder", args.checkpoint)]
    if args.eval:
        found += [Source("--eval file", p, "file") for p in data_paths(args.eval)]
    return found


def _eval_sequences(prefix: str, num_tokens: int, seq_len: int) -> list:
    import numpy as np
    import torch

    from densa.data.indexed import IndexedDataset
    from densa.sparse_moe.errors import MoEError

    ds = IndexedDataset(prefix)
    chunks, have = [], 0
    for i in range(len(ds)):
        chunks.append(np.asarray(ds[i], dtype=np.int64))
        have += len(chunks[-1])
        if have >= num_tokens + 1:
            break
    tokens = torch.from_numpy(np.concatenate(chunks)[: num_tokens + 1]) if chunks else torch.zeros(0)
    n = (tokens.numel() - 1) // seq_len
    if n == 0:
        raise MoEError(f"{prefix}: fewer than {seq_len + 1} tokens to evaluate on")
    seqs = torch.stack([tokens[i * seq_len : (i + 1) * seq_len + 1] for i in range(n)])
    return list(seqs.split(8))
