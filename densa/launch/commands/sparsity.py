"""`densa sparsity measure`: PPL-p% activation sparsity of a model → JSON report, markdown, PNG plots.
`densa sparsity predictors`: per-layer low-rank neuron predictors for `densa generate --predictors`."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    sp = subparsers.add_parser("sparsity", help="activation-sparsity metrics (CETT, PPL-p%%)")
    sub = sp.add_subparsers(dest="sparsity_command", metavar="SUBCOMMAND")
    sp.set_defaults(handler=lambda args: (sp.print_help(), 2)[1])
    m = sub.add_parser(
        "measure", help="PPL-p%% sparsity: per-layer CETT thresholds so perplexity rises by p%%"
    )
    m.add_argument("--model", required=True, help="densa model folder or HF model folder")
    m.add_argument(
        "--data", required=True, help=".bin/.idx prefix (densa data preprocess) or a UTF-8 text file"
    )
    m.add_argument("--tokenizer", help="tokenizer for a text --data (default: the model folder's)")
    m.add_argument(
        "--ppl-p", type=float, default=1.0, help="allowed perplexity increase in percent (default 1)"
    )
    m.add_argument("--seq-len", type=int, default=256)
    m.add_argument("--num-tokens", type=int, default=16384, help="tokens scored (and calibrated on)")
    m.add_argument(
        "--max-cett-tokens", type=int, default=4096, help="tokens cached per layer for the CETT search"
    )
    m.add_argument(
        "--sweep", default="0.05,0.1,0.2,0.3", help="extra CETT targets for the ppl-vs-sparsity plot"
    )
    m.add_argument("--baselines", action="store_true", help="also search top-k and FAT-ε for the same p")
    m.add_argument("--tol", type=float, default=0.05, help="ratio tolerance, relative to p/100")
    m.add_argument("--batch-size", type=int, default=8)
    m.add_argument("--out", default="sparsity_report", help="output folder")
    m.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    m.set_defaults(handler=_measure)
    pr = sub.add_parser(
        "predictors", help="train per-layer low-rank predictors of active FFN neurons (Deja Vu)"
    )
    pr.add_argument("--model", required=True, help="densa model folder or HF model folder")
    pr.add_argument(
        "--data", required=True, help=".bin/.idx prefix (densa data preprocess) or a UTF-8 text file"
    )
    pr.add_argument("--rank", type=int, required=True, help="predictor rank r (d → r → ffn_dim)")
    pr.add_argument("--out", required=True, help="predictors file to write (.safetensors)")
    pr.add_argument(
        "--thresholds",
        metavar="REPORT",
        help="sparsity.json (or comma-separated layer thresholds) defining 'active'; default: non-zero",
    )
    pr.add_argument("--tokenizer", help="tokenizer for a text --data (default: the model folder's)")
    pr.add_argument("--seq-len", type=int, default=256)
    pr.add_argument(
        "--num-tokens", type=int, default=8192, help="tokens whose FFN inputs train the predictors"
    )
    pr.add_argument("--epochs", type=int, default=20, help="at most; early stopping as in Deja Vu")
    pr.add_argument("--lr", type=float, default=1e-3)
    pr.add_argument("--val-fraction", type=float, default=0.05, help="held out for the reported metrics")
    pr.add_argument("--batch-size", type=int, default=8, help="sequences per forward when collecting inputs")
    pr.add_argument("--seed", type=int, default=0)
    pr.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    pr.set_defaults(handler=_predictors)


def _progress_to_stderr(quiet: bool) -> None:
    """Show densa.sparsity's progress lines (batches, thresholds tried, layers) on stderr: these commands
    run for minutes on a real model."""
    import logging
    import sys

    from densa.sparsity.calibration import log

    class ToStderr(logging.Handler):  # looks sys.stderr up per line (it may be replaced, e.g. by pytest)
        densa_progress = True

        def emit(self, record: logging.LogRecord) -> None:
            print(self.format(record), file=sys.stderr, flush=True)

    for handler in [h for h in log.handlers if getattr(h, "densa_progress", False)]:
        log.removeHandler(handler)  # an earlier command in this process (tests) added one
    if quiet:
        return
    handler = ToStderr()
    handler.setFormatter(logging.Formatter("densa sparsity: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)


def _load_model(path: str):
    from densa.errors import CheckpointError
    from densa.models.checkpoint_io import is_densa_checkpoint, load_transformer
    from densa.models.hf.importer import is_hf_folder, load_hf_model

    if not Path(path).exists():
        raise CheckpointError(f"{path}: no such model folder")
    if is_densa_checkpoint(path):
        return load_transformer(path)
    if is_hf_folder(path):
        return load_hf_model(path)
    raise CheckpointError(
        f"{path}: neither a densa model folder nor an HF folder (config.json with model_type)"
    )


def _load_tokens(args: argparse.Namespace, need: int):
    import numpy as np
    import torch

    from densa.data.indexed import IndexedDataset, data_paths
    from densa.data.tokenizer import load_tokenizer
    from densa.errors import DataError

    if all(p.exists() for p in data_paths(args.data)):
        ds, parts, have = IndexedDataset(args.data), [], 0
        for i in range(len(ds)):  # read only as many documents as needed
            if have >= need:
                break
            parts.append(ds[i].astype(np.int64))
            have += parts[-1].size
        return torch.from_numpy(np.concatenate(parts) if parts else np.zeros(0, np.int64))
    if not Path(args.data).is_file():
        raise DataError(f"--data {args.data}: neither a .bin/.idx prefix nor a text file")
    tokenizer = load_tokenizer(args.tokenizer or args.model)
    return torch.tensor(tokenizer.encode(Path(args.data).read_text(encoding="utf-8")), dtype=torch.long)


def _measure(args: argparse.Namespace) -> int:
    import math

    from densa.sparsity import make_sequences, ppl_p_sparsity
    from densa.sparsity.baselines import baseline_ppl_p
    from densa.sparsity.plots import write_plots
    from densa.sparsity.ppl import check_p

    check_p(args.ppl_p)  # fail before loading anything
    _progress_to_stderr(args.quiet)
    model = _load_model(args.model)
    need = math.ceil(args.num_tokens / args.seq_len) * (args.seq_len + 1)
    seqs = make_sequences(_load_tokens(args, need), args.seq_len, args.num_tokens)
    sweep = [float(x) for x in args.sweep.split(",") if x.strip()]
    report = ppl_p_sparsity(
        model,
        seqs,
        args.ppl_p,
        tol=args.tol,
        sweep=sweep,
        max_cett_tokens=args.max_cett_tokens,
        batch_size=args.batch_size,
    )
    if args.baselines:
        report.baselines = [
            baseline_ppl_p(
                model,
                seqs,
                m,
                args.ppl_p,
                tol=args.tol,
                batch_size=args.batch_size,
                ppl_dense=report.ppl_dense,
            )
            for m in ("topk", "fat")
        ]
    report.meta.update(model=Path(args.model).name, data=Path(args.data).name)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report.save(out / "sparsity.json")
    (out / "sparsity.md").write_text(report.to_markdown(), encoding="utf-8")
    write_plots(report, out)
    print(report.to_markdown())
    print(f"wrote {out}/sparsity.json, sparsity.md, sparsity_per_layer.png, ppl_vs_sparsity.png")
    return 0


def parse_thresholds(value: str, option: str) -> list[float]:
    """Layer thresholds from a sparsity.json path or a comma-separated list (`0,0,0,0`)."""
    import json
    import math

    from densa.errors import DensaError
    from densa.sparsity import SparsityReport

    path = Path(value)
    if path.is_file():
        try:
            thresholds = SparsityReport.from_dict(json.loads(path.read_text(encoding="utf-8"))).thresholds
        except (ValueError, KeyError, TypeError) as err:  # JSONDecodeError is a ValueError
            raise DensaError(
                f"{option} {path}: not a sparsity report from `densa sparsity measure` ({err!r})"
            ) from None
    else:
        try:
            thresholds = [float(t) for t in value.split(",")]
        except ValueError:
            raise DensaError(
                f"{option} {value}: no such file, and not comma-separated thresholds such as 0,0,0,0"
            ) from None
    # A layer threshold bounds a neuron's output magnitude (|a_i|·‖W_down[:, i]‖ <= t: inactive); a negative,
    # nan or inf one would silently run every neuron or none.
    bad = [t for t in thresholds if not 0 <= t < math.inf]
    if bad or not thresholds:
        raise DensaError(
            f"{option} {value}: layer thresholds must be finite and >= 0 (neuron output magnitudes), "
            f"got {bad}"
        )
    return thresholds


def _predictors(args: argparse.Namespace) -> int:
    import json
    import math
    import os

    from densa.errors import DensaError
    from densa.sparsity import make_sequences
    from densa.sparsity.predictor import fit_predictors
    from densa.sparsity.predictor_io import save_predictors

    if args.rank < 1:
        raise DensaError(f"--rank must be >= 1, got {args.rank}")
    if args.epochs < 1 or not 0 < args.val_fraction < 1:
        raise DensaError("need --epochs >= 1 and 0 < --val-fraction < 1")
    thresholds = parse_thresholds(args.thresholds, "--thresholds") if args.thresholds else None
    _check_predictor_outputs(args.out)  # before the minutes of fitting
    _progress_to_stderr(args.quiet)
    model = _load_model(args.model)
    n_layers = model.config.n_layers
    if thresholds is not None and len(thresholds) != n_layers:
        raise DensaError(
            f"--thresholds {args.thresholds}: {len(thresholds)} layer thresholds, "
            f"the model has {n_layers} layers"
        )
    need = math.ceil(args.num_tokens / args.seq_len) * (args.seq_len + 1)
    seqs = make_sequences(_load_tokens(args, need), args.seq_len, args.num_tokens)
    predictors, metrics = fit_predictors(
        model,
        seqs,
        args.rank,
        layer_thresholds=thresholds,
        max_tokens=None,  # every token of --num-tokens
        batch_size=args.batch_size,
        seed=args.seed,
        epochs=args.epochs,
        lr=args.lr,
        val_fraction=args.val_fraction,
    )
    print(f"| layer | recall | precision | true sparsity | predicted sparsity | cost (rank {args.rank}) |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for m, p in zip(metrics, predictors, strict=True):
        print(
            f"| {m.layer} | {m.recall:.3f} | {m.precision:.3f} | {m.true_sparsity:.2%} | "
            f"{m.predicted_sparsity:.2%} | {p.cost_ratio:.3f} |"
        )
    out = save_predictors(args.out, predictors, layer_thresholds=thresholds, metrics=metrics)
    # The file's header already holds the metrics; the JSON is for reading them without safetensors.
    summary = {
        "predictors": out.name,
        "model": Path(args.model).name,
        "data": Path(args.data).name,
        "rank": args.rank,
        "num_tokens": int(seqs.shape[0] * args.seq_len),
        "layer_thresholds": thresholds,
        "mean_recall": sum(m.recall for m in metrics) / len(metrics),
        "mean_predicted_sparsity": sum(m.predicted_sparsity for m in metrics) / len(metrics),
        "layers": [m.to_dict() for m in metrics],
    }
    metrics_path = metrics_path_for(out)
    tmp = metrics_path.with_name(f".{metrics_path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    tmp.replace(metrics_path)
    print(f"wrote {out} and {metrics_path}")
    return 0


def _check_predictor_outputs(out: str) -> None:
    """--out may replace only an earlier predictors file, and its .metrics.json only an earlier summary."""
    import json
    import os

    from densa.models.tagged_safetensors import check_tagged_destination
    from densa.outputs import DestinationError
    from densa.sparsity.predictor_io import FORMAT

    check_tagged_destination(out, FORMAT, "predictors")
    metrics = metrics_path_for(out)
    if os.path.lexists(metrics):
        try:
            summary = json.loads(metrics.read_text(encoding="utf-8"))
            ours = isinstance(summary, dict) and "predictors" in summary and "layers" in summary
        except (OSError, ValueError, TypeError):
            ours = False
        if not ours:
            raise DestinationError(
                f"{metrics} (the metrics file of --out) exists and is not one densa wrote; refusing to"
                " replace it. Choose another --out or remove it yourself"
            )


def metrics_path_for(predictors_path: str | Path) -> Path:
    """`p.safetensors` → `p.metrics.json`, next to it."""
    path = Path(predictors_path)
    return path.with_name(f"{path.stem}.metrics.json")
