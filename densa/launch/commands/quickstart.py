"""`densa quickstart`: the whole pipeline on the Shakespeare corpus (what `make quickstart` runs)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "quickstart",
        help="fetch corpus, train tokenizer, preprocess, train, eval, export to HF, print a sample",
        description="Runs recipes/quickstart.yaml end to end; every stage resumes when rerun.",
    )
    p.add_argument("--recipe", default="recipes/quickstart.yaml", help="recipe to run (default: %(default)s)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--cache-dir", default=None, help="corpus cache (default: $DENSA_CACHE or ~/.cache/densa)")
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from densa.errors import DensaError
    from densa.launch.quickstart import run_quickstart

    if not Path(args.recipe).is_file():
        raise DensaError(f"{args.recipe}: recipe not found (run from the repository root or pass --recipe)")
    run_quickstart(args.recipe, args.overrides, args.cache_dir)
    return 0
