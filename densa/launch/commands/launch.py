"""`densa launch RECIPE (--nproc N | --hostfile FILE)`: validate, then start deepspeed or torchrun.

The launcher runs under `densa.launch.supervise`: Ctrl-C or SIGTERM makes the ranks save a checkpoint and
exit 0, and no process of the job outlives `densa launch`."""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
from pathlib import Path

from densa.launch.commands.check import add_recipe_args


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "launch",
        help="validate a recipe, then run `python -m densa.train` under deepspeed or torchrun",
        description="Validate the recipe for the world size first; nothing starts if it is invalid.",
    )
    add_recipe_args(p)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--nproc", type=int, help="ranks on this machine")
    where.add_argument("--hostfile", help="MPI-style hostfile: one 'HOST slots=N' per line")
    p.add_argument(
        "--launcher", choices=["deepspeed", "torchrun"], help="default: the recipe's parallel.launcher"
    )
    p.add_argument("--master-port", type=int, default=None, help="rendezvous port (default: the launcher's)")
    p.add_argument(
        "--stop-grace",
        type=float,
        default=None,
        metavar="SECONDS",
        help="after Ctrl-C/SIGTERM, how long the ranks may take to save a checkpoint before they are killed"
        " (default 600)",
    )
    p.add_argument("--dry-run", action="store_true", help="print the command instead of running it")
    p.set_defaults(handler=_launch)


def _launch(args: argparse.Namespace) -> int:
    from densa.config.checks import derived_batch, validate
    from densa.config.load import load_recipe
    from densa.launch import supervise
    from densa.launch.commands.check import environment_warnings
    from densa.launch.launcher import LaunchError, build_command, parse_hostfile

    if args.stop_grace is not None and not args.stop_grace >= 0:
        raise LaunchError(f"--stop-grace must be >= 0 seconds, got {args.stop_grace}")
    cfg = load_recipe(args.recipe, args.overrides)
    hosts = parse_hostfile(args.hostfile) if args.hostfile else None
    world_size = hosts.world_size if hosts else args.nproc
    launcher = args.launcher or cfg.parallel.launcher
    cmd = build_command(
        args.recipe,
        args.overrides,
        launcher=launcher,
        nproc=args.nproc,
        hosts=hosts,
        master_port=args.master_port,
    )
    validate(cfg, world_size, source=args.recipe)
    batch = derived_batch(cfg, world_size)
    for warning in environment_warnings(cfg):
        print(f"densa launch: warning: {warning}", file=sys.stderr)
    print(
        f"densa launch: world size {world_size} = dp {batch.dp} × tp {cfg.parallel.tp};"
        f" grad_accum {batch.grad_accum} × micro_batch {batch.micro_batch}",
        file=sys.stderr,
    )
    if args.dry_run:
        print(shlex.join(cmd))
        return 0
    # The launcher script sits next to this interpreter even when its venv is not activated.
    sibling = Path(sys.executable).parent / cmd[0]
    exe = shutil.which(cmd[0]) or (str(sibling) if sibling.is_file() else None)
    if exe is None:
        package = "deepspeed" if launcher == "deepspeed" else "torch"
        raise LaunchError(f"{cmd[0]} not found on PATH or next to {sys.executable} (it comes with {package})")
    print(f"densa launch: {shlex.join(cmd)}", file=sys.stderr, flush=True)
    # Not subprocess.run: a signal must reach the ranks as one SIGTERM (they save), not kill the launcher.
    grace = supervise.DEFAULT_STOP_GRACE_S if args.stop_grace is None else args.stop_grace
    return supervise.run_job([exe, *cmd[1:]], grace_s=grace)
