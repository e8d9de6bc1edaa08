"""`densa train RECIPE [--set a.b=c ...]`: train in this process (use `densa launch` for several ranks)."""

from __future__ import annotations


def register(subparsers) -> None:
    from densa.train.__main__ import add_arguments

    p = subparsers.add_parser("train", help="train or finetune from a YAML recipe (auto-resumes)")
    add_arguments(p)
    p.set_defaults(handler=_handler)


def _handler(args) -> int:
    from densa.train.__main__ import run

    return run(args)
