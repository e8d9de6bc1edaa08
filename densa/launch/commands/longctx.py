"""`densa longctx prefill --method ring|star|apb --model PATH --nproc H ...`: sequence-parallel prefill
(densa.longctx.apb) of a synthetic task or given token ids on H processes, then Star-style decode of the
query; writes every host's counters (bytes per layer, attention pairs, FFN tokens, seconds) as JSON.

With `--nproc H` this command starts `python -m torch.distributed.run --standalone --nproc_per_node H -m
densa.launch.commands.longctx ...`; under torchrun (RANK/WORLD_SIZE set) it runs as one rank, so
`torchrun --nproc_per_node H -m densa.launch.commands.longctx prefill ...` works directly too.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    top = subparsers.add_parser("longctx", help="long-context prefill across processes (Ring, Star, APB)")
    sub = top.add_subparsers(dest="longctx_command", metavar="SUBCOMMAND", required=True)
    p = sub.add_parser(
        "prefill",
        help="sequence-parallel prefill + distributed decode on H processes",
        description=__doc__.split("\n\n")[0],
    )
    _PREFILL_OPTIONS[:] = add_prefill_args(p)
    p.set_defaults(handler=_handler)


_PREFILL_OPTIONS: list[argparse.Action] = []


def add_prefill_args(p: argparse.ArgumentParser) -> list[argparse.Action]:
    """Add the prefill options to `p`; returns their actions (to rebuild a rank's argv)."""
    before = len(p._actions)
    p.add_argument("--method", required=True, choices=["ring", "star", "apb"])
    p.add_argument("--model", required=True, help="HF folder, densa model folder, run dir or step_N")
    p.add_argument("--nproc", type=int, default=None, help="start H local ranks (omit under torchrun)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--task", choices=["mqar", "passkey", "first_occurrence"], help="synthetic task rows")
    src.add_argument("--ids", help='JSON file {"context": [[ids]], "query": [[ids]]} (rows of equal length)')
    p.add_argument("--seq-len", type=int, default=264, help="task: context + query tokens")
    p.add_argument("--rows", type=int, default=8, help="task: rows (one batch)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--heads", default=None, help="apb: retaining-heads file (save_heads output)")
    p.add_argument("--anchor-len", type=int, default=None, help="default: star a block, apb block/4")
    p.add_argument("--passing-len", type=int, default=None, help="apb: tokens per host and KV head (block/8)")
    p.add_argument("--pool-kernel", type=int, default=5, help="apb: max-pool kernel over the heads' scores")
    p.add_argument(
        "--passing", choices=["heads", "random", "none"], default="heads", help="apb passing choice"
    )
    p.add_argument(
        "--query-outside-anchor", action="store_true", help="apb: the anchor holds document tokens only"
    )
    p.add_argument("--max-new-tokens", type=int, default=0, help="greedy tokens after the query")
    p.add_argument("--backend", choices=["gloo", "nccl"], default="gloo", help="nccl: one GPU per rank")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds a collective waits for a peer")
    p.add_argument("--out", default=None, help="write the JSON report here (default: print it)")
    p.add_argument("--dry-run", action="store_true", help="--nproc: print the torchrun command only")
    return [a for a in p._actions[before:] if a.option_strings]


def rank_argv(args: argparse.Namespace) -> list[str]:
    """`longctx prefill ...` with every option of `args` but --nproc and --dry-run (what each rank parses)."""
    out = ["longctx", "prefill"]
    for action in _PREFILL_OPTIONS:
        value = getattr(args, action.dest)
        if action.dest in ("nproc", "dry_run") or value is None or value is False:
            continue
        out += [action.option_strings[0]] + ([] if value is True else [str(value)])
    return out


def torchrun_command(args: argparse.Namespace) -> list[str]:
    run = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(args.nproc)]
    return [*run, "-m", "densa.launch.commands.longctx", *rank_argv(args)]


def _handler(args: argparse.Namespace) -> int:
    from densa.longctx.apb import SequenceParallelError

    if "WORLD_SIZE" in os.environ:
        from densa.launch.longctx_rank import run_rank

        return run_rank(args)
    if args.nproc is None or args.nproc < 1:
        raise SequenceParallelError("give --nproc H (H >= 1 ranks), or start this command under torchrun")
    cmd = torchrun_command(args)
    if args.dry_run:
        print(shlex.join(cmd))
        return 0
    print(f"densa longctx: {shlex.join(cmd)}", file=sys.stderr, flush=True)
    return subprocess.call(cmd)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m densa.launch.commands.longctx` (what each torchrun rank runs)."""
    from densa.errors import DensaError
    from densa.launch.cli import DensaParser

    parser = DensaParser(prog="densa")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except DensaError as err:
        print(f"densa longctx (rank {os.environ.get('RANK', '?')}): error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
