"""The `densa` command: a thin dispatcher over sub-command modules.

Each sub-command lives in its own module under `densa.launch.commands` and exposes
`register(subparsers) -> None`; the module's handler does the imports it needs lazily,
so `densa --help` stays fast and a broken optional dependency only breaks its own command.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from densa.errors import DensaError

# Modules under densa.launch.commands, in the order they appear in `densa --help`.
COMMAND_MODULES = (
    "quickstart",
    "data",
    "train",
    "check",
    "launch",
    "eval",
    "generate",
    "convert",
    "export",
    "sparsity",
    "moefy",
    "edit",
    "analyze",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="densa", description="Dense-capacity, sparse-compute LM toolkit.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"densa.launch.commands.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print("densa: interrupted", file=sys.stderr)
        return 130
    except DensaError as err:
        print(f"densa {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
