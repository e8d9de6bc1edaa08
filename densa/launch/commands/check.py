"""`densa check RECIPE`: validate a recipe and show what it resolves to, without running anything."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the schema pulls in torch through densa.models; keep `densa --help` fast
    from densa.config.schema import RunConfig


def add_recipe_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="recipe YAML file")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe value, e.g. --set optim.lr=1e-3 (repeatable; VALUE is parsed as YAML)",
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "check",
        help="validate a recipe; print the resolved recipe, batch arithmetic and DeepSpeed config",
        description="Validate a recipe (all problems at once, exit 1) and print what it resolves to.",
    )
    add_recipe_args(p)
    p.add_argument(
        "--world-size",
        type=int,
        default=None,
        help="ranks to check the batch arithmetic for (default: parallel.tp)",
    )
    p.add_argument("--quiet", action="store_true", help="print nothing when the recipe is valid")
    p.set_defaults(handler=_check)


def environment_warnings(cfg: RunConfig) -> list[str]:
    """Things that are fine in a recipe but will fail on this machine: missing files, fp16 without GPU."""
    out = []
    sources = [
        (f"data.{k}.{i}.path", s.path) for k in ("train", "valid") for i, s in enumerate(getattr(cfg.data, k))
    ]
    for where, path in sources:
        files = [path] if cfg.data.format == "sft" else [f"{path}.bin", f"{path}.idx"]
        out += [f"{where}: {f} not found" for f in files if not Path(f).exists()]
    for where, path in (("data.tokenizer", cfg.data.tokenizer), ("init.from_path", cfg.init.from_path)):
        if path and not Path(path).exists():
            hub = (
                f" (a model on the Hub: hf download ORG/NAME --local-dir {path})"
                if where == "init.from_path"
                else ""
            )
            out.append(f"{where}: {path} not found{hub}")
    if cfg.parallel.precision == "fp16":
        import torch

        if not torch.cuda.is_available():
            out.append("parallel.precision: fp16 needs a GPU and this machine has none")
    if cfg.logging.wandb.project:
        import importlib.util

        if importlib.util.find_spec("wandb") is None:
            out.append("logging.wandb.project: wandb is not installed (pip install wandb)")
    return out


def _check(args: argparse.Namespace) -> int:
    from densa.config.checks import derived_batch, validate
    from densa.config.deepspeed_config import build_deepspeed_config
    from densa.config.load import dump_recipe, load_recipe

    cfg = load_recipe(args.recipe, args.overrides)
    world_size = args.world_size or cfg.parallel.tp
    validate(cfg, world_size, source=args.recipe)
    for warning in environment_warnings(cfg):
        print(f"densa check: warning: {warning}", file=sys.stderr)
    if args.quiet:
        return 0
    batch = derived_batch(cfg, world_size)
    print(f"# {args.recipe}: valid\n# --- resolved recipe")
    print(dump_recipe(cfg), end="")
    print(f"# --- batch for world size {world_size} (dp {batch.dp} × tp {cfg.parallel.tp})")
    split = f"dp {batch.dp} × grad_accum {batch.grad_accum} × micro_batch {batch.micro_batch}"
    print(
        f"# {cfg.batch.global_tokens} tokens/step"
        f" = {batch.global_samples} sequences of {cfg.data.seq_len} = {split}"
    )
    print("# --- generated DeepSpeed config")
    print(json.dumps(build_deepspeed_config(cfg, world_size), indent=2))
    return 0
