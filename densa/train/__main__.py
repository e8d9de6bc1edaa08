"""`python -m densa.train RECIPE [--set a.b=c ...]`: what every rank runs (`densa launch` starts it)."""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="YAML recipe")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="A.B=C",
        help="override a recipe value",
    )


def run(args: argparse.Namespace) -> int:
    """Load, validate and train; 0 on success and on a signal-triggered stop (a checkpoint was saved)."""
    from densa.config.load import load_recipe
    from densa.train.run import train

    cfg = load_recipe(args.recipe, args.overrides)
    result = train(cfg)
    if result.interrupted:
        print(f"densa train: stopped at step {result.state.step}; resume by running again", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    from densa.errors import DensaError
    from densa.train.failures import peer_failure_message

    parser = argparse.ArgumentParser(prog="python -m densa.train", description="Train from a recipe.")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except DensaError as err:
        print(f"densa train: error: {err}", file=sys.stderr)
        return 1
    except RuntimeError as err:  # a dead, stopped or stuck peer: one line instead of a traceback
        message = peer_failure_message(err)
        if message is None:
            raise
        print(f"densa train: error: {message}", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
