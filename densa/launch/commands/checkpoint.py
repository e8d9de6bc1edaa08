"""`densa checkpoint universal RUN_DIR|CHECKPOINT`: DeepSpeed universal copy of a ZeRO checkpoint."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "checkpoint",
        help="operate on training checkpoints (universal conversion for another DP size)",
        description="Operate on the checkpoints of a densa run.",
    )
    sub = p.add_subparsers(dest="checkpoint_command", metavar="ACTION")
    u = sub.add_parser(
        "universal",
        help="write CHECKPOINT/universal/, loadable at any data-parallel size",
        description="Convert a ZeRO-1/2/3 checkpoint's per-rank optimizer partitions with DeepSpeed's "
        "ds_to_universal into CHECKPOINT/universal/ (the original files are only read). `densa train` "
        "does this itself when it resumes on another number of data-parallel ranks; converting ahead, "
        "on one machine, keeps a large conversion out of the job (its other ranks sit idle while rank 0 "
        "converts, for at most $DENSA_CONVERT_TIMEOUT_S seconds).",
    )
    u.add_argument("path", help="a run dir (its newest complete checkpoint) or RUN/checkpoints/step_N")
    u.set_defaults(handler=_universal)
    p.set_defaults(handler=lambda args: p.print_help() or 2)


def _universal(args: argparse.Namespace) -> int:
    from densa.errors import CheckpointError
    from densa.train.checkpoint import is_complete, latest_checkpoint
    from densa.train.reshard import convert, has_universal

    checkpoint = args.path if is_complete(args.path) else latest_checkpoint(args.path)
    if checkpoint is None:
        raise CheckpointError(f"{args.path}: neither a complete checkpoint nor a run dir holding one")
    existed = has_universal(checkpoint)
    out = convert(checkpoint)
    print(f"{'already converted' if existed else 'wrote'} {out}")
    return 0
