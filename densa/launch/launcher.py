"""Launch commands for `densa launch`: hostfile parsing and deepspeed/torchrun command lines.

Every rank runs `python -m densa.train RECIPE [--set ...]`, which loads and validates the recipe again
itself, so what runs is exactly what `densa check` accepted.

DeepSpeed 0.19's runner, as read from its source: without a hostfile (the default `/job/hostfile` is
used if it exists) it runs on localhost with one rank per accelerator, and on a CPU-only machine the
CPU accelerator reports `LOCAL_SIZE` or the number of NUMA nodes (usually 1). `--num_gpus N` (alias
`--num_accelerators`) overrides that to N local ranks, so `--nproc N` maps to it on CPU and GPU alike.
We pass `--module` (DeepSpeed's spelling of `python -m`) and `--no_local_rank`: the launcher exports
LOCAL_RANK, RANK and WORLD_SIZE, so the trainer does not need a `--local_rank` argument.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from densa.errors import DensaError

TRAIN_MODULE = "densa.train"
LAUNCHERS = ("deepspeed", "torchrun")
# MPI style: `HOST slots=N`, optionally followed by other KEY=VALUE fields (e.g. max_slots=N).
_HOST_LINE = re.compile(r"^(?P<host>\S+)\s+slots=(?P<slots>\S+)(?:\s+\S+=\S+)*$")


class LaunchError(DensaError):
    """A hostfile or launch option cannot be used."""


@dataclass(frozen=True)
class Hosts:
    """The machines of a hostfile, in file order."""

    path: str
    slots: dict[str, int]

    @property
    def world_size(self) -> int:
        return sum(self.slots.values())


def parse_hostfile(path: str | Path) -> Hosts:
    """Parse an MPI-style hostfile (`HOST slots=N`, `#` comments, blank lines); all errors at once."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise LaunchError(f"{path}: cannot read hostfile: {err.strerror}") from None
    slots: dict[str, int] = {}
    first_line: dict[str, int] = {}
    errors: list[str] = []
    for number, raw in enumerate(lines, start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = _HOST_LINE.match(line)
        if not match:
            errors.append(f"{path}:{number}: expected 'HOST slots=N', got {raw.strip()!r}")
            continue
        host, count = match["host"], match["slots"]
        if not count.isdigit() or int(count) < 1:
            errors.append(f"{path}:{number}: slots must be a positive integer, got {count!r}")
        elif host in slots:
            errors.append(f"{path}:{number}: host {host!r} already listed on line {first_line[host]}")
        else:
            slots[host], first_line[host] = int(count), number
    if not slots and not errors:
        errors.append(f"{path}: no hosts (expected lines like 'worker-0 slots=8')")
    if errors:
        raise LaunchError("\n".join(errors))
    return Hosts(str(path), slots)


def build_command(
    recipe: str,
    overrides: list[str] | tuple[str, ...] = (),
    *,
    launcher: str = "deepspeed",
    nproc: int | None = None,
    hosts: Hosts | None = None,
    master_port: int | None = None,
) -> list[str]:
    """The argv that starts `python -m densa.train RECIPE --set ...` on every rank."""
    if (nproc is None) == (hosts is None):
        raise LaunchError("give exactly one of --nproc N or --hostfile FILE")
    if nproc is not None and nproc < 1:
        raise LaunchError(f"--nproc must be >= 1, got {nproc}")
    tail = [recipe] + [arg for item in overrides for arg in ("--set", item)]
    if launcher == "deepspeed":
        cmd = ["deepspeed"]
        cmd += ["--hostfile", hosts.path] if hosts is not None else ["--num_gpus", str(nproc)]
        if master_port is not None:
            cmd += ["--master_port", str(master_port)]
        return [*cmd, "--no_local_rank", "--module", TRAIN_MODULE, *tail]
    if launcher == "torchrun":
        if hosts is not None:
            if len(hosts.slots) > 1:
                raise LaunchError(
                    f"{hosts.path}: torchrun starts one node per command and the hostfile lists "
                    f"{len(hosts.slots)}; run torchrun on each host, or use --launcher deepspeed"
                )
            nproc = next(iter(hosts.slots.values()))
        cmd = ["torchrun", "--standalone", "--nproc_per_node", str(nproc)]
        if master_port is not None:  # --standalone picks a free port itself; a fixed one replaces it
            cmd = [
                "torchrun",
                "--nnodes",
                "1",
                "--nproc_per_node",
                str(nproc),
                "--master_port",
                str(master_port),
            ]
        return [*cmd, "-m", TRAIN_MODULE, *tail]
    raise LaunchError(f"unknown launcher {launcher!r} (deepspeed or torchrun)")
