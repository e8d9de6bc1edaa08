"""Scenarios run as separate processes by the trainer tests (one process per rank).

    python rank_scenarios.py SCENARIO OUT_DIR [ARG]

Rank 0 writes OUT_DIR/result.json where a scenario has results to report.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import torch
from trainer_helpers import SEQ, VOCAB, StopAt, replace, tiny_cfg, weights

from densa.train.callbacks import Callback
from densa.train.run import build_trainer, train
from densa.train.synthetic import SyntheticDataset

torch.set_num_threads(1)
DATA = SyntheticDataset(VOCAB, SEQ)


def gold(out: Path, zero_stage: str) -> None:
    """2N steps vs N + resume + N on this world, ZeRO stage `zero_stage`."""
    n = 3
    base = replace(tiny_cfg(out / "full", steps=2 * n), "parallel", zero_stage=int(zero_stage))
    ref_trainer = build_trainer(base, train_data=DATA)
    ref = ref_trainer.fit()
    split_cfg = replace(base, "run", out_dir=str(out / "split"))
    first = build_trainer(split_cfg, callbacks=[StopAt(n - 1)], train_data=DATA).fit()
    second_trainer = build_trainer(split_cfg, train_data=DATA)
    second = second_trainer.fit()
    a, b = weights(ref_trainer), weights(second_trainer)
    if int(os.environ["RANK"]) == 0:
        result = {
            "full": [h["loss"] for h in ref.history],
            "split": [h["loss"] for h in first.history + second.history],
            "full_lr": [h["lr"] for h in ref.history],
            "split_lr": [h["lr"] for h in first.history + second.history],
            "max_weight_diff": max(float((a[k] - b[k]).abs().max()) for k in a),
            "files": sorted(
                p.name for p in (out / "split" / "checkpoints" / f"step_{2 * n}" / "deepspeed").iterdir()
            ),
        }
        (out / "result.json").write_text(json.dumps(result))


class RecordLoaded(Callback):
    """Keeps the full weights right after a checkpoint load (before any step)."""

    def __init__(self) -> None:
        self.loaded: dict[str, torch.Tensor] | None = None

    def on_checkpoint_load(self, trainer, step, path) -> None:
        self.loaded = weights(trainer)


def reshard(out: Path, arg: str) -> None:
    """`arg` = PHASES,STAGE[,PRECISION]: ZeRO-STAGE runs (fp32 unless PRECISION) of 3 * RESHARD_N steps on
    the launched world, one per phase in PHASES (joined by +): `ref` runs it uninterrupted in out/ref; `a`,
    `b`, `c` each run RESHARD_N steps of it in out/split, resuming from the previous phase's checkpoint,
    which may be of another world size. Rank 0 writes out/phase_<phase>.json and the weights just loaded
    to out/loaded_<phase>.pt."""
    n, (phases, stage, *precision) = RESHARD_N, arg.split(",")
    for phase in phases.split("+"):
        run_dir = out / ("ref" if phase == "ref" else "split")
        cfg = tiny_cfg(run_dir, steps=3 * n)
        cfg = replace(cfg, "parallel", zero_stage=int(stage), precision=(precision or ["fp32"])[0])
        stops = {"a": [StopAt(n - 1)], "b": [StopAt(2 * n - 1)], "c": [], "ref": []}[phase]
        probe = RecordLoaded()
        result = build_trainer(cfg, callbacks=[*stops, probe], train_data=DATA).fit()
        if int(os.environ["RANK"]) == 0:
            record = {
                "world_size": int(os.environ["WORLD_SIZE"]),
                "steps": [h["step"] for h in result.history],
                "losses": [h["loss"] for h in result.history],
                "lrs": [h["lr"] for h in result.history],
                "consumed_samples": result.state.consumed_samples,
            }
            if probe.loaded is not None:
                torch.save(probe.loaded, out / f"loaded_{phase}.pt")
            (out / f"phase_{phase}.json").write_text(json.dumps(record))


RESHARD_N = 3


def tensor_parallel(out: Path, init_from: str) -> None:
    """tp = 2 on 2 ranks (dp = 1) from the weights in `init_from`; rank 0 reports the losses."""
    cfg = replace(replace(tiny_cfg(out, steps=4), "parallel", tp=2), "init", from_path=init_from)
    result = train(cfg, train_data=DATA)
    if int(os.environ["RANK"]) == 0:
        (out / "result.json").write_text(json.dumps([h["loss"] for h in result.history]))


class DieAt(Callback):
    def __init__(self, step: int, rank: int) -> None:
        self.step, self.rank = step, rank

    def pre_step(self, trainer, step) -> None:
        if step == self.step and trainer.engine.world.rank == self.rank:
            os._exit(17)


def die(out: Path, _: str) -> None:
    """Rank 1 dies before step 2; rank 0 must not hang."""
    build_trainer(tiny_cfg(out, steps=50), callbacks=[DieAt(2, 1)], train_data=DATA).fit()


class KillDuringSave(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_checkpoint_save(self, trainer, step, path) -> None:
        if step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def kill_in_save(out: Path, arg: str) -> None:
    """Checkpoint every 2 steps; SIGKILL while step_4 is being written (when arg == 'kill')."""
    cfg = replace(tiny_cfg(out, steps=6), "checkpoint", interval=2, keep_last=3, resume="auto")
    callbacks = [KillDuringSave(4)] if arg == "kill" else []
    result = train(cfg, callbacks=callbacks, train_data=DATA)
    (out / "result.json").write_text(
        json.dumps({"losses": [h["loss"] for h in result.history], "first_step": result.history[0]["step"]})
    )


class Slow(Callback):
    def post_step(self, trainer, step, metrics) -> None:
        time.sleep(0.3)


def sigterm(out: Path, _: str) -> None:
    """Runs long and slowly; the test sends SIGTERM."""
    cfg = replace(tiny_cfg(out, steps=500), "checkpoint", interval=1000, resume="auto")
    result = build_trainer(cfg, callbacks=[Slow()], train_data=DATA).fit()
    (out / "result.json").write_text(
        json.dumps({"interrupted": result.interrupted, "step": result.state.step})
    )


if __name__ == "__main__":
    name, out_dir = sys.argv[1], Path(sys.argv[2])
    globals()[name](out_dir, sys.argv[3] if len(sys.argv) > 3 else "")
