"""`densa analyze probes|modularity|emergence` (alias `densa analysis`): Emergent Modularity analyses."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers) -> None:
    sp = subparsers.add_parser(
        "analyze",
        aliases=["analysis"],
        help="modularity analysis: probes, specialisation, experts, emergence",
    )
    sub = sp.add_subparsers(dest="analyze_command", metavar="SUBCOMMAND")
    sp.set_defaults(handler=lambda args: (sp.print_help(), 2)[1])
    p = sub.add_parser("probes", help="build function probes (POS, facts by relation, genre) for a tokenizer")
    p.add_argument("--tokenizer", required=True, help="model folder, HF folder or SentencePiece .model")
    p.add_argument("--out", required=True, help="probes folder to write")
    p.add_argument(
        "--cache-dir", default=None, help="material cache (default: $DENSA_CACHE or ~/.cache/densa)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=_probes)
    m = sub.add_parser("modularity", help="specialisation, functional experts and perturbation of one model")
    m.add_argument("model", nargs="?", help="densa model folder or HF folder")
    m.add_argument("--model", dest="model_opt", help="the same, as an option")
    _common(m)
    m.add_argument("--top-fraction", type=float, default=0.01, help="top neurons per label (default 1%%)")
    m.add_argument("--alpha", type=float, default=0.001, help="hypergeometric test level")
    m.add_argument("--perturb-per-label", type=int, default=25, help="sequences per label when perturbing")
    m.add_argument("--no-perturb", action="store_true", help="skip the deactivation experiments")
    m.add_argument(
        "--partition-seeds",
        type=int,
        default=1,
        help="parameter clusterings (k-means seeds) in which functional experts are found and switched off",
    )
    m.set_defaults(handler=_modularity)
    e = sub.add_parser("emergence", help="partition vs neuron-function stability over a run's checkpoints")
    e.add_argument("run_dir", help="training run directory (its checkpoints/step_* are read)")
    _common(e)
    e.set_defaults(handler=_emergence)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--probes", required=True, help="folder from `densa analyze probes`")
    p.add_argument("--out", required=True, help="output folder (modularity.json / emergence.json, .md, .png)")
    p.add_argument("--experts", type=int, default=16, help="experts per layer (must divide the FFN width)")
    p.add_argument("--seed", type=int, default=0)


def _probes(args: argparse.Namespace) -> int:
    from densa.analysis.probes import build_probes, load_probes
    from densa.data.tokenizer import load_tokenizer

    out = build_probes(load_tokenizer(args.tokenizer), args.out, cache=args.cache_dir, seed=args.seed)
    meta = load_probes(out).meta
    for family in meta["labels"]:
        print(
            f"{family}: {meta['sequences'][family]} sequences, {meta['tokens'][family]} tokens, labels "
            + ", ".join(f"{k} ({v})" for k, v in meta["positives"][family].items())
        )
    print(f"wrote {out}")
    return 0


def _load(path: str):
    """(model, tokenizer fingerprint or None) of a densa model folder or HF folder."""
    from densa.data.tokenizer import load_tokenizer
    from densa.errors import DensaError
    from densa.launch.commands.sparsity import _load_model

    model = _load_model(path)
    try:
        return model, load_tokenizer(path).fingerprint
    except DensaError:
        return model, None  # no tokenizer in the folder: only the vocabulary size can be checked


def _modularity(args: argparse.Namespace) -> int:
    from densa.analysis.errors import AnalysisError
    from densa.analysis.modularity import Settings, analyze_modularity
    from densa.analysis.modularity.experts import check_experts
    from densa.analysis.modularity.report import write_modularity
    from densa.analysis.probes import check_tokenizer, load_probes

    path = args.model or args.model_opt
    if not path:
        raise AnalysisError("give the model folder (positional MODEL or --model)")
    probes = load_probes(args.probes)
    model, fingerprint = _load(path)
    check_tokenizer(probes, fingerprint, model.config.vocab_size, path)
    check_experts(model.config.ffn_dim, args.experts)
    settings = Settings(
        experts=args.experts,
        top_fraction=args.top_fraction,
        alpha=args.alpha,
        perturb=not args.no_perturb,
        perturb_per_label=args.perturb_per_label,
        partition_seeds=args.partition_seeds,
        seed=args.seed,
    )
    if settings.partition_seeds < 1:
        raise AnalysisError(f"--partition-seeds {settings.partition_seeds}: give at least 1")
    result = analyze_modularity(model, probes, settings)
    result["model"] = path
    for written in write_modularity(result, Path(args.out)):
        print(f"wrote {written}")
    return 0


def _emergence(args: argparse.Namespace) -> int:
    from densa.analysis.errors import AnalysisError
    from densa.analysis.modularity import emergence
    from densa.analysis.modularity.experts import check_experts
    from densa.analysis.modularity.report import write_emergence
    from densa.analysis.modularity.series import series_checkpoints, series_models
    from densa.analysis.probes import check_tokenizer, load_probes
    from densa.config.load import load_recipe
    from densa.data.tokenizer import load_tokenizer
    from densa.train.checkpoint import complete_checkpoints

    recipe = Path(args.run_dir) / "recipe.yaml"
    if not recipe.is_file():
        raise AnalysisError(f"{args.run_dir}: no recipe.yaml: not a densa run directory")
    cfg = load_recipe(recipe, check=False)
    ckpts = complete_checkpoints(args.run_dir)
    if len(ckpts) < 3:
        raise AnalysisError(
            f"{args.run_dir}: {len(ckpts)} complete checkpoint(s); emergence needs at least 3 (train with a "
            "smaller checkpoint.interval and a larger checkpoint.keep_last)"
        )
    probes = load_probes(args.probes)
    check_tokenizer(
        probes, load_tokenizer(cfg.data.tokenizer).fingerprint, cfg.model.vocab_size, args.run_dir
    )
    check_experts(cfg.model.ffn_dim, args.experts)
    # SSD runs permute neurons expert by expert: read every checkpoint in the original neuron order
    series = series_checkpoints(args.run_dir)
    result = emergence(series_models(series, cfg.model), probes, args.experts, seed=args.seed)
    result["run"] = args.run_dir
    result["modes"] = [c.mode for c in series]
    for written in write_emergence(result, Path(args.out)):
        print(f"wrote {written}")
    print(json.dumps({"steps": result["steps"][-1], "checkpoints": len(result["steps"])}))
    return 0
