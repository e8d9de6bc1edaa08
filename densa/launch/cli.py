"""The `densa` command: a thin dispatcher over sub-command modules.

Each sub-command lives in its own module under `densa.launch.commands` and exposes
`register(subparsers) -> None`; the module's handler does the imports it needs lazily,
so `densa --help` stays fast and a broken optional dependency only breaks its own command.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from densa import __version__
from densa.errors import DensaError

# Modules under densa.launch.commands, in the order they appear in `densa --help`.
COMMAND_MODULES = (
    "quickstart",
    "data",
    "train",
    "checkpoint",
    "check",
    "launch",
    "eval",
    "generate",
    "longctx",
    "convert",
    "export",
    "sparsity",
    "moefy",
    "edit",
    "analyze",
    "plugin",
    "density",
)


class DefaultsFormatter(argparse.HelpFormatter):
    """Append "(default: X)" to an option's help, unless the help already names its default or there is
    none worth showing (None, a store_true flag's False)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "default" in text.lower()
            or default is None
            or default is False
            or default is argparse.SUPPRESS
            or not (action.option_strings or action.nargs in ("?", "*"))
        ):
            return text
        return f"{text} (default: %(default)s)"


class DensaParser(argparse.ArgumentParser):
    """ArgumentParser whose help shows defaults; sub-command parsers are made of the same class
    (argparse's add_subparsers uses type(parent)), so one formatter covers every command."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", DefaultsFormatter)
        super().__init__(*args, **kwargs)

    def format_help(self) -> str:
        for action in self._actions:  # argparse hides options without help text, defaults included
            if action.help is None and action.option_strings and action.default not in (None, False):
                action.help = "default: %(default)s"
        return super().format_help()


def build_parser() -> argparse.ArgumentParser:
    parser = DensaParser(prog="densa", description="Dense-capacity, sparse-compute LM toolkit.")
    parser.add_argument("--version", action="version", version=f"densa {__version__}")
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
