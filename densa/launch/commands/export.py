"""`densa export RUN_DIR|CHECKPOINT --out DIR`: HF folder + tokenizer + model card; optional Hub push.
`densa export HF_DIR --push-to-hub REPO` (no --out) uploads a folder exported before, as it is."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export",
        help="export a run / checkpoint / model folder as an HF folder with tokenizer and model card",
        description="Write safetensors, config, generation config, tokenizer (the recipe's data.tokenizer), "
        "README.md model card (recipe, data, metrics, sparsity) and remote code for variants HF lacks.",
    )
    p.add_argument(
        "source",
        help="run dir, RUN/checkpoints/step_N, densa model folder or HF folder; with --push-to-hub and no"
        " --out, an exported HF folder to upload as it is",
    )
    p.add_argument(
        "--out", default=None, help="output folder (written atomically); required unless only pushing"
    )
    p.add_argument("--step", type=int, default=None, help="checkpoint step of a run dir (default: newest)")
    p.add_argument("--dtype", default=None, help="fp32, bf16 or fp16 (default: as stored)")
    p.add_argument("--tokenizer", default=None, help="default: the recipe's data.tokenizer")
    p.add_argument("--sparsity-report", default=None, help="sparsity.json (default: one next to the source)")
    p.add_argument(
        "--predictors", default=None, help="predictors.safetensors (default: one next to the source)"
    )
    p.add_argument(
        "--license",
        default=None,
        help="license in the model card's front matter (default: the source model's, or apache-2.0 for a"
        " model trained from scratch)",
    )
    p.add_argument(
        "--dense",
        action="store_true",
        help="export an MoE folder (densa moefy) as its dense equivalent: same weights, every expert active",
    )
    p.add_argument(
        "--lora",
        choices=["merged", "adapter"],
        default=None,
        help="a LoRA run: merged HF folder or peft adapter folder (default: the recipe's lora.export)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument(
        "--push-to-hub",
        metavar="REPO",
        default=None,
        help="upload --out (or, without --out, the exported source folder) to this Hub repo (USER/NAME);"
        " needs `hf auth login` or HF_TOKEN",
    )
    p.add_argument("--dry-run", action="store_true", help="with --push-to-hub: list what would be uploaded")
    p.add_argument("--private", action="store_true", help="with --push-to-hub: create a private repo")
    p.set_defaults(handler=_export)


def _resolve(source: Path, step: int | None) -> tuple[Path, Path | None]:
    """(folder to read weights from, run dir or None)."""
    from densa.errors import CheckpointError
    from densa.train.checkpoint import complete_checkpoints, is_complete

    if not source.is_dir():
        raise CheckpointError(f"{source}: no such folder")
    if (source / "checkpoints").is_dir():
        found = dict(complete_checkpoints(source))
        if not found:
            raise CheckpointError(
                f"{source / 'checkpoints'}: no complete step_N checkpoint (missing COMPLETE)"
            )
        if step is not None and step not in found:
            raise CheckpointError(f"{source}: no complete checkpoint step_{step} (have {sorted(found)})")
        return found[step if step is not None else max(found)], source
    if step is not None:
        raise CheckpointError(f"--step needs a run dir (with checkpoints/), got {source}")
    if (source / "train_state.json").is_file() and not is_complete(source):
        raise CheckpointError(f"{source}: missing COMPLETE marker (an interrupted save?)")
    run = source.parent.parent if is_complete(source) and source.parent.name == "checkpoints" else None
    return source, run


def _step(folder: Path) -> int | None:
    name = folder.name
    return int(name[5:]) if name.startswith("step_") and name[5:].isdigit() else None


def _first(*paths: Path | None) -> Path | None:
    return next((p for p in paths if p is not None and p.is_file()), None)


def _sources(folder: Path, run: Path | None, files: dict[str, Path | str | None]) -> list:
    """What `densa export` reads, for `densa.outputs.check_destination`."""
    from densa.outputs import Source

    found = [Source("run directory", run, "run")] if run else []
    found.append(Source("checkpoint folder" if run else "source folder", folder))
    for label, file in files.items():
        if file is not None and Path(file).exists():
            found.append(Source(label, file, "folder" if Path(file).is_dir() else "file"))
    return found


def _export(args: argparse.Namespace) -> int:
    import yaml

    from densa.errors import CheckpointError
    from densa.inference import parse_dtype
    from densa.outputs import check_destination, check_replaceable
    from densa.train.export import export_run, side_files
    from densa.train.finetune import load_weights

    if args.dry_run and not args.push_to_hub:
        raise CheckpointError("--dry-run only applies to --push-to-hub")
    if args.out is None:
        if not args.push_to_hub:
            raise CheckpointError(
                "--out is required (to upload a folder exported before: densa export DIR --push-to-hub REPO)"
            )
        return _push(Path(args.source), args)
    folder, run = _resolve(Path(args.source), args.step)
    _check_moe(folder, args.dense)
    recipe_file = _first(folder / "recipe.yaml", run / "recipe.yaml" if run else None)
    recipe_text = recipe_file.read_text(encoding="utf-8") if recipe_file else None
    recipe = yaml.safe_load(recipe_text) if recipe_text else {}
    tokenizer = args.tokenizer or (recipe.get("data") or {}).get("tokenizer")
    if tokenizer is None and any((folder / n).is_file() for n in ("tokenizer.json", "tokenizer.model")):
        tokenizer = folder
    found_sparsity, found_predictors = side_files(folder, run)
    sparsity = args.sparsity_report or found_sparsity
    predictors = args.predictors or found_predictors
    metrics_file = run / "metrics.jsonl" if run else None
    # Before reading the weights: never write into what is read, nor over a folder densa did not write.
    files = {"recipe": recipe_file, "metrics file": metrics_file, "tokenizer": tokenizer}
    files.update({"sparsity report": sparsity, "predictors file": predictors})
    check_destination(args.out, _sources(folder, run, files))
    check_replaceable(args.out, args.overwrite)
    config, state = load_weights(folder, merge_lora=False)  # export_run merges, or writes the adapters
    if config is None:
        raise CheckpointError(f"{folder}: records no model config")
    out = export_run(  # the exporter the end-of-training export.hf_dir uses too
        args.out,
        config,
        state,
        run=run,
        folder=folder,
        recipe_text=recipe_text,
        step=_step(folder),
        tokenizer=tokenizer,
        dtype=parse_dtype(args.dtype),
        license=args.license,
        sparsity_report=sparsity,
        predictors=predictors,
        overwrite=args.overwrite,
        lora_export=args.lora,
    )
    print(f"exported {folder} -> {out}" + ("" if tokenizer else " (no tokenizer found; pass --tokenizer)"))
    return _push(out, args) if args.push_to_hub else 0


def _check_moe(folder: Path, dense: bool) -> None:
    """An MoE folder exports only with --dense: HF has no class that runs densa's top-k experts, and
    writing its weights alone would be the dense model under an MoE name."""
    import json

    from densa.errors import CheckpointError

    moe = folder / "moe.json"
    if not moe.is_file() or dense:
        return
    try:
        meta = json.loads(moe.read_text(encoding="utf-8"))
        form = f"{meta['num_experts']} experts, top-{meta['top_k']}"
    except (ValueError, KeyError, TypeError):
        form = "unreadable moe.json"
    raise CheckpointError(
        f"{folder} is an MoE folder ({form}); an HF export cannot route to the top-k experts and would be"
        f" the dense model. Export the dense equivalent (same weights, every expert active) with"
        f" `densa export {folder} --out DIR --dense`; run the MoE form with `densa generate --model {folder}`"
    )


def _push(folder: Path, args: argparse.Namespace) -> int:
    """Upload an exported HF folder as it is (the card is checked for local paths first)."""
    from densa.errors import CheckpointError
    from densa.inference import push_to_hub

    if not (folder / "config.json").is_file() or (folder / "checkpoints").is_dir():
        raise CheckpointError(
            f"{folder}: not an exported HF folder (no config.json); export it first:"
            f" densa export {folder} --out DIR --push-to-hub {args.push_to_hub}"
        )
    plan = push_to_hub(folder, args.push_to_hub, private=args.private, dry_run=args.dry_run)
    print(
        plan.describe()
        if args.dry_run
        else f"uploaded {len(plan.files)} files from {folder} to {plan.repo_id}"
    )
    return 0
