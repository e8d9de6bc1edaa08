"""Atomic, resumable training checkpoints in RUN_DIR/checkpoints/step_N/.

A checkpoint is written into `step_N.tmp/`, completed by a `COMPLETE` marker written last, then renamed
to `step_N/`; only folders with the marker count, and `*.tmp` leftovers of a crashed save are removed at
the next start. Contents:

    deepspeed/              DeepSpeed save_checkpoint: model, optimizer, ZeRO partitions (one per DP rank)
    train_state.json        step, consumed_samples, skip counters, LR scheduler, topology
    rng_rank{R}.pt          python / numpy / torch (/ cuda) RNG of rank R
    callbacks.pt            state_dict() of every callback, by name (rank 0's)
    recipe.yaml             the resolved recipe the run was started with
    COMPLETE                marker, written last

DeepSpeed's own format is used for model and optimizer because it already knows how to save and reload
ZeRO-partitioned optimizer state across stages. The partition layout ties a ZeRO ≥ 1 checkpoint to its
DP size: `load` resumes one of another DP size through DeepSpeed's universal checkpoint, converted once
into `step_N/universal/` (`densa.train.reshard`); a change of ZeRO stage or TP size is refused. Every
.pt file is read weights-only (`densa.train.safe_load`): a file with pickled code is refused, never
executed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from densa.errors import CheckpointError, CorruptFileError
from densa.train import reshard, safe_load

if TYPE_CHECKING:
    from densa.models.config import ModelConfig
    from densa.train.engine import Engine

# densa.train.engine (deepspeed) is imported inside the functions that need it, so reading checkpoints
# (`densa eval`, `densa generate`, init.from_path) stays light and keeps DeepSpeed's log lines out of stdout.

MARKER = "COMPLETE"
STATE_FILE = "train_state.json"
CALLBACKS_FILE = "callbacks.pt"
RECIPE_FILE = "recipe.yaml"
_STEP_RE = re.compile(r"^step_(\d+)$")


@dataclass
class TrainState:
    step: int = 0
    """Optimizer steps completed (skipped ones included)."""
    consumed_samples: int = 0
    """Global samples drawn from the training data so far: the data position."""
    skipped_steps: int = 0
    """Steps skipped for a non-finite loss, in total."""
    consecutive_bad: int = 0
    """Non-finite steps in a row at the end of the run so far."""


def checkpoints_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / "checkpoints"


def is_complete(path: str | os.PathLike) -> bool:
    return (Path(path) / MARKER).is_file()


def complete_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """(step, folder) of every complete checkpoint under the run dir, oldest first."""
    root = checkpoints_dir(run_dir)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        m = _STEP_RE.match(child.name)
        if m and child.is_dir() and is_complete(child):
            found.append((int(m.group(1)), child))
    return sorted(found)


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    found = complete_checkpoints(run_dir)
    return found[-1][1] if found else None


def resolve_resume(resume: str, run_dir: str | os.PathLike) -> Path | None:
    """The checkpoint to resume from: `auto` (newest complete in the run dir, if any), `none`, or a path."""
    if resume == "none":
        return None
    if resume == "auto":
        return latest_checkpoint(run_dir)
    path = Path(resume)
    if path.is_dir() and not is_complete(path) and latest_checkpoint(path) is not None:
        return latest_checkpoint(path)  # a run dir was given
    if not path.is_dir():
        raise CheckpointError(f"checkpoint.resume: {path} does not exist")
    if not is_complete(path):
        raise CheckpointError(f"checkpoint.resume: {path} has no {MARKER} marker (an interrupted save?)")
    return path


def resume_candidates(resume: str, run_dir: str | os.PathLike) -> list[Path]:
    """Checkpoints to try in order: `auto` gives every complete one, newest first (an unreadable one is
    skipped for the one before it); `none` gives none; a path gives that one only (no fallback)."""
    if resume == "auto":
        return [path for _, path in reversed(complete_checkpoints(run_dir))]
    path = resolve_resume(resume, run_dir)
    return [] if path is None else [path]


def clean_leftovers(run_dir: str | os.PathLike) -> list[Path]:
    """Remove `step_N.tmp` folders of interrupted saves; returns what was removed."""
    root = checkpoints_dir(run_dir)
    removed = []
    if root.is_dir():
        for child in root.iterdir():
            if child.name.endswith(".tmp") and child.is_dir():
                shutil.rmtree(child, ignore_errors=True)
                removed.append(child)
    return removed


def _fsync_tree(folder: Path) -> None:
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def checkpoint_weights(
    folder: str | os.PathLike, model: ModelConfig | None = None
) -> dict[str, torch.Tensor]:
    """fp32 tp = 1 model weights of a complete checkpoint, without building an engine.

    ZeRO-0/1/2 keep the whole module in deepspeed/mp_rank_00_model_states.pt (read without importing
    deepspeed); ZeRO-3 partitions it, so DeepSpeed's zero_to_fp32 reassembles the fp32 master weights.
    Tensor-parallel checkpoints hold one mp_rank file per TP rank: their shards are joined with the
    model config (`model`, else the architecture in the checkpoint's recipe.yaml).
    """
    ds_dir = Path(folder) / "deepspeed"
    shards = sorted(ds_dir.glob("mp_rank_*_model_states.pt"))
    modules = [safe_load.load(path)["module"] for path in shards]
    if len(modules) > 1:
        from densa.models.parallel import join_shards

        if model is None:
            from densa.config.load import load_recipe
            from densa.train.methods import trained_model_config

            model = trained_model_config(load_recipe(Path(folder) / RECIPE_FILE, check=False))
        try:
            joined = join_shards(modules, model)
        except ValueError as err:
            raise CheckpointError(
                f"{folder}: cannot join {len(modules)} tensor-parallel shards: {err}"
            ) from None
        return {k: v.float() for k, v in joined.items()}
    if modules:
        return {k: v.float() for k, v in modules[0].items()}
    if list(ds_dir.glob("zero_pp_rank_*_model_states.pt")):
        from densa.train.engine import zero3_checkpoint_weights

        return zero3_checkpoint_weights(folder)
    raise CheckpointError(f"{folder}: no DeepSpeed model states under deepspeed/")


def topology(engine: Engine) -> dict[str, int]:
    return {
        "world_size": engine.world.world_size,
        "dp": engine.dp_size,
        "tp": engine.tp,
        "zero_stage": engine.zero_stage,
    }


class CheckpointManager:
    """Saves and loads checkpoints of one run; every method is collective over all ranks."""

    def __init__(self, run_dir: str | os.PathLike, keep_last: int, engine: Engine) -> None:
        self.root = checkpoints_dir(run_dir)
        self.keep_last, self.engine = keep_last, engine
        self.rank = engine.world.rank

    def save(
        self,
        state: TrainState,
        callback_state: dict[str, Any],
        recipe_yaml: str,
        before_commit: Callable[[Path], None] | None = None,
    ) -> Path:
        """Write step_N atomically. `before_commit(tmp)` runs on every rank once all files are written."""
        from densa.train import engine as eng

        final = self.root / f"step_{state.step}"
        tmp = self.root / f"step_{state.step}.tmp"
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        eng.barrier()
        self.engine.save(tmp)
        safe_load.save(eng.rng_state(), tmp / f"rng_rank{self.rank}.pt")
        if self.rank == 0:
            record = {
                **asdict(state),
                "scheduler": self.engine.scheduler_state(),
                "topology": topology(self.engine),
            }
            (tmp / STATE_FILE).write_text(json.dumps(record, indent=2) + "\n")
            safe_load.save(callback_state, tmp / CALLBACKS_FILE)
            (tmp / RECIPE_FILE).write_text(recipe_yaml)
        eng.barrier()
        if before_commit is not None:
            before_commit(tmp)
        eng.barrier()
        if self.rank == 0:
            _fsync_tree(tmp)
            (tmp / MARKER).write_text(f"step {state.step}\n")
            _fsync_dir(tmp)
            if final.exists():  # re-saving a step (e.g. a signal right after an interval save)
                shutil.rmtree(final)
            tmp.rename(final)
            _fsync_dir(self.root)
            self._prune()
        eng.barrier()
        return final

    def _prune(self) -> None:
        for _, path in complete_checkpoints(self.root.parent)[: -self.keep_last]:
            shutil.rmtree(path, ignore_errors=True)

    def load_first(self, paths: list[Path], fallback: bool) -> tuple[Path, TrainState, dict[str, Any]] | None:
        """Load the first of `paths` that every rank can read (None if `paths` is empty).

        A checkpoint with an unreadable file (`CorruptFileError`: truncated, garbage) is skipped with a
        warning on stderr when `fallback` (auto-resume), else raised. Loading the next one restores every
        piece of state (weights, optimizer, scheduler, RNG, callbacks), so what the bad one half-loaded is
        overwritten. When none is readable, a CheckpointError lists each with its reason."""
        import sys

        skipped: list[str] = []
        for path in paths:
            error = None
            try:
                loaded = self.load(path)
            except CorruptFileError as err:
                error = str(err)
            errors = [error]
            if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
                errors = [None] * torch.distributed.get_world_size()
                torch.distributed.all_gather_object(errors, error)  # every rank skips, or none does
            error = next((e for e in errors if e), None)
            if error is None:
                if skipped and self.rank == 0:
                    print(f"densa train: resuming from {path} instead", file=sys.stderr, flush=True)
                return path, *loaded
            if not fallback:
                raise CorruptFileError(f"checkpoint.resume {path}: unusable: {error}")
            skipped.append(f"{path.name} ({error})")
            if self.rank == 0:
                print(
                    f"densa train: warning: skipping checkpoint {path}: {error}", file=sys.stderr, flush=True
                )
        if skipped:
            raise CheckpointError(
                f"no usable checkpoint in {self.root}: " + "; ".join(skipped) + "; repair or remove them, "
                "or set checkpoint.resume: none to start over"
            )
        return None

    def load(self, path: Path) -> tuple[TrainState, dict[str, Any]]:
        """Restore engine, scheduler and this rank's RNG; returns the train state and callback state."""
        from densa.train import engine as eng

        try:
            record = json.loads((path / STATE_FILE).read_text())
            saved, now = record["topology"], topology(self.engine)
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as err:
            reason = f"{type(err).__name__}: {str(err).splitlines()[0][:100] if str(err) else ''}"
            raise CorruptFileError(
                f"{path / STATE_FILE}: not a readable train state, truncated or damaged ({reason})"
            ) from None
        mismatch = {k: (saved[k], now[k]) for k in ("tp", "zero_stage") if saved[k] != now[k]}
        if mismatch:
            desc = ", ".join(f"{k} {a} -> {b}" for k, (a, b) in mismatch.items())
            raise CheckpointError(
                f"{path}: saved with a different topology ({desc}); a ZeRO stage or TP size cannot change on"
                " resume (only the data-parallel size can). Start a new run with init.from_path pointing"
                " at this checkpoint (weights only), or keep the original parallel settings."
            )
        universal = reshard.needs_universal(saved, now)
        if universal:  # ZeRO partitions of another DP size: load DeepSpeed's universal copy
            if refused := reshard.refusal(path, saved):
                raise CheckpointError(refused)
            reshard.convert_collective(path, self.rank)
        self.engine.load(path, universal=universal)
        self.engine.load_scheduler_state(record.pop("scheduler"))
        rng = path / f"rng_rank{self.rank}.pt"
        if rng.is_file():
            eng.set_rng_state(safe_load.load(rng, allow=safe_load.legacy_rng_globals()))
        state = TrainState(**{k: record[k] for k in asdict(TrainState())})
        callbacks = safe_load.load(path / CALLBACKS_FILE) if (path / CALLBACKS_FILE).is_file() else {}
        return state, callbacks
