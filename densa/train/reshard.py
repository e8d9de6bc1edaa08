"""Resuming a ZeRO checkpoint on another data-parallel size, through DeepSpeed's universal checkpoint.

ZeRO-1/2/3 save the optimizer state (fp32 master weights, Adam moments) as one flat partition per DP
rank, so those files only load at the DP size that wrote them. DeepSpeed's `ds_to_universal` rewrites
them as one file per parameter and state (`zero/<name>/{fp32,exp_avg,exp_avg_sq,step}.pt`), which
DeepSpeed loads at any DP size with `checkpoint.load_universal`. densa keeps the converted copy inside
the checkpoint it came from:

    step_N/deepspeed/     the original partitions, never modified
    step_N/universal/     the universal copy (written under universal.tmp/, completed by COMPLETE, renamed)

so it is pruned with its checkpoint and converted at most once (`engine.Engine.load` mends two things
DeepSpeed's ZeRO-3 universal load gets wrong). Everything else in a densa checkpoint
(step, consumed_samples, LR scheduler, callbacks) is already independent of the DP size; see
docs/reliability.md for what a resumed run sees of the data and the RNG.
"""

from __future__ import annotations

import os
import shutil
import sys
from datetime import timedelta
from pathlib import Path

from densa.errors import CheckpointError

MARKER = "COMPLETE"
UNIVERSAL_DIR = "universal"  # == engine.UNIVERSAL_TAG (engine imports deepspeed; this module must not)


def needs_universal(saved: dict[str, int], now: dict[str, int]) -> bool:
    """True when a checkpoint of topology `saved` must go through the universal format to load on `now`:
    ZeRO ≥ 1 partitions written at another DP size (ZeRO-0 state is whole on every rank)."""
    return saved["zero_stage"] > 0 and saved["dp"] != now["dp"]


def refusal(checkpoint: Path, saved: dict[str, int]) -> str | None:
    """Why a checkpoint that `needs_universal` cannot be resumed that way (None when it can)."""
    if saved["tp"] > 1:
        return (
            f"{checkpoint}: saved with tp {saved['tp']} at data-parallel size {saved['dp']}; densa converts"
            " only tp = 1 checkpoints to another data-parallel size (DeepSpeed's universal conversion needs"
            " Megatron's patterns to join tensor-parallel shards, which densa's models do not declare)."
            f" Resume it on {saved['dp'] * saved['tp']} processes, or start a new run with init.from_path"
            " pointing at it (weights only)"
        )
    return None


def _saved_topology(checkpoint: Path) -> dict[str, int]:
    import json

    from densa.train.checkpoint import STATE_FILE

    try:
        return json.loads((checkpoint / STATE_FILE).read_text())["topology"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{checkpoint / STATE_FILE}: no readable topology ({err})") from None


def saved_zero_stage(checkpoint: Path) -> int:
    return int(_saved_topology(checkpoint)["zero_stage"])


def saved_dp_size(checkpoint: Path) -> int:
    return int(_saved_topology(checkpoint)["dp"])


def universal_path(checkpoint: str | os.PathLike) -> Path:
    return Path(checkpoint) / UNIVERSAL_DIR


def has_universal(checkpoint: str | os.PathLike) -> bool:
    return (universal_path(checkpoint) / MARKER).is_file()


def convert(checkpoint: str | os.PathLike) -> Path:
    """Write `checkpoint`/universal from `checkpoint`/deepspeed unless a complete one exists; its path.

    One process only (it reads every rank's partition). An interrupted conversion leaves universal.tmp/,
    which the next call replaces; the original files are only read."""
    from densa.train import engine as eng
    from densa.train.checkpoint import is_complete

    checkpoint = Path(checkpoint)
    final = universal_path(checkpoint)
    if has_universal(checkpoint):
        return final
    if not is_complete(checkpoint):
        raise CheckpointError(f"{checkpoint}: not a complete densa checkpoint (no {MARKER} marker)")
    source = checkpoint / eng.DS_TAG
    if saved_zero_stage(checkpoint) == 0 or not list(source.glob("*zero_pp_rank_*_optim_states.pt")):
        raise CheckpointError(
            f"{checkpoint}: no ZeRO optimizer partitions under {eng.DS_TAG}/; a ZeRO-0 checkpoint loads at"
            " any data-parallel size as it is"
        )
    work = final.with_name(UNIVERSAL_DIR + ".tmp")  # ds_to_universal also writes a `latest` file beside
    tmp = work / UNIVERSAL_DIR  # its output folder: keep that inside the scratch folder too
    shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(final, ignore_errors=True)  # a copy without its marker is incomplete
    try:
        eng.convert_to_universal(source, tmp)
    except Exception as err:  # DeepSpeed asserts and raises bare exceptions on what it cannot convert
        shutil.rmtree(work, ignore_errors=True)
        if isinstance(err, CheckpointError):
            raise
        raise CheckpointError(
            f"{checkpoint}: DeepSpeed's universal conversion failed: {type(err).__name__}: {err}"
        ) from err
    for path in sorted(tmp.rglob("*")):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    (tmp / MARKER).write_text("universal checkpoint (deepspeed ds_to_universal)\n")
    tmp.rename(final)
    shutil.rmtree(work, ignore_errors=True)
    return final


CONVERT_TIMEOUT_ENV = "DENSA_CONVERT_TIMEOUT_S"
DEFAULT_CONVERT_TIMEOUT_S = 4 * 3600.0


def convert_timeout_s() -> float:
    """`$DENSA_CONVERT_TIMEOUT_S`: how long the other ranks wait for rank 0's conversion (default 4 h)."""
    from densa.train.failures import _seconds_from_env

    timeout = _seconds_from_env(CONVERT_TIMEOUT_ENV, DEFAULT_CONVERT_TIMEOUT_S)
    if timeout <= 0:
        raise CheckpointError(f"${CONVERT_TIMEOUT_ENV} must be > 0 seconds, got {timeout:g}")
    return timeout


def convert_collective(checkpoint: Path, rank: int) -> None:
    """`convert` on rank 0 while the others wait; every rank raises rank 0's error, if any.

    The others wait on a gloo group of their own whose timeout is `convert_timeout_s()`, not the
    collective timeout of training: converting a large model in one process takes longer than a step, and
    a dead rank 0 still ends the wait at once (the connection closes)."""
    import torch.distributed as dist

    group = None
    if dist.is_initialized() and dist.get_world_size() > 1:
        group = dist.new_group(backend="gloo", timeout=timedelta(seconds=convert_timeout_s()))
    error = None
    if rank == 0:
        if not has_universal(checkpoint):
            print(
                f"densa train: {checkpoint} was saved at another data-parallel size; converting it to"
                f" a universal checkpoint in {universal_path(checkpoint)}",
                file=sys.stderr,
                flush=True,
            )
        try:
            convert(checkpoint)
        except CheckpointError as err:
            error = str(err)
    if group is not None:
        box = [error]
        dist.broadcast_object_list(box, src=0, group=group)
        error = box[0]
        dist.destroy_process_group(group)
    if error:
        raise CheckpointError(error)
