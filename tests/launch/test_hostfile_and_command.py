"""Hostfile parsing (errors name file:line) and the launcher command lines."""

from __future__ import annotations

from pathlib import Path

import pytest

from densa.errors import DensaError
from densa.launch.launcher import Hosts, LaunchError, build_command, parse_hostfile


def hostfile(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "hosts"
    path.write_text(text)
    return path


def test_parse_hostfile(tmp_path: Path) -> None:
    path = hostfile(tmp_path, "# cluster\n\nworker-0 slots=8\nworker-1 slots=4 max_slots=4  # spare\n")
    hosts = parse_hostfile(path)
    assert hosts.slots == {"worker-0": 8, "worker-1": 4}
    assert hosts.world_size == 12


def test_hostfile_errors_all_listed_with_lines(tmp_path: Path) -> None:
    path = hostfile(
        tmp_path, "worker-0 slots=8\nworker-1 slot=4\nworker-2 slots=0\nworker-0 slots=2\nworker-3\n"
    )
    with pytest.raises(LaunchError) as excinfo:
        parse_hostfile(path)
    assert str(excinfo.value).splitlines() == [
        f"{path}:2: expected 'HOST slots=N', got 'worker-1 slot=4'",
        f"{path}:3: slots must be a positive integer, got '0'",
        f"{path}:4: host 'worker-0' already listed on line 1",
        f"{path}:5: expected 'HOST slots=N', got 'worker-3'",
    ]
    assert isinstance(excinfo.value, DensaError)


def test_empty_and_missing_hostfile(tmp_path: Path) -> None:
    empty = hostfile(tmp_path, "# nothing\n\n")
    with pytest.raises(LaunchError, match=r"hosts: no hosts \(expected lines like 'worker-0 slots=8'\)"):
        parse_hostfile(empty)
    with pytest.raises(LaunchError, match="nope: cannot read hostfile"):
        parse_hostfile(tmp_path / "nope")


def test_deepspeed_commands() -> None:
    cmd = build_command("r.yaml", ["optim.lr=1e-3"], nproc=2)
    assert (
        " ".join(cmd)
        == "deepspeed --num_gpus 2 --no_local_rank --module densa.train r.yaml --set optim.lr=1e-3"
    )
    hosts = Hosts("hosts", {"a": 8, "b": 8})
    cmd = build_command("r.yaml", hosts=hosts, master_port=29600)
    assert " ".join(cmd) == (
        "deepspeed --hostfile hosts --master_port 29600 --no_local_rank --module densa.train r.yaml"
    )


def test_torchrun_commands() -> None:
    cmd = build_command("r.yaml", ["a=1"], launcher="torchrun", nproc=4)
    assert " ".join(cmd) == "torchrun --standalone --nproc_per_node 4 -m densa.train r.yaml --set a=1"
    one_host = Hosts("hosts", {"localhost": 2})
    cmd = build_command("r.yaml", launcher="torchrun", hosts=one_host, master_port=29700)
    assert " ".join(cmd) == "torchrun --nnodes 1 --nproc_per_node 2 --master_port 29700 -m densa.train r.yaml"
    with pytest.raises(LaunchError, match="torchrun starts one node per command and the hostfile lists 2"):
        build_command("r.yaml", launcher="torchrun", hosts=Hosts("hosts", {"a": 1, "b": 1}))


def test_command_argument_errors() -> None:
    with pytest.raises(LaunchError, match="give exactly one of --nproc N or --hostfile FILE"):
        build_command("r.yaml")
    with pytest.raises(LaunchError, match="--nproc must be >= 1, got 0"):
        build_command("r.yaml", nproc=0)
    with pytest.raises(LaunchError, match="unknown launcher 'mpirun'"):
        build_command("r.yaml", launcher="mpirun", nproc=1)
