"""Train what the APB benchmark's cross-host task needs (docs/apb.md): the backbone fine-tuned with
`repeated_pair` in its mixture (`recipes/apb_backbone_tiny.yaml`, from runs/locret_bench/backbone into
runs/apb_bench/backbone) and its retaining heads (`recipes/apb_heads_tiny.yaml`, into
runs/apb_bench/heads_repeated_pair). Every 50 steps the backbone is scored on held-out repeated_pair rows
with full attention and with cross-block attention masked (the §7.4 check); the run stops once full
attention is solved for two checks in a row. `--reuse` keeps finished stages. One thread, as committed."""

from __future__ import annotations

import argparse
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from benchmarks.apb.mask_check import masked_logits
from benchmarks.locret.accuracy_vs_budget import RECIPES, load_backbone
from benchmarks.locret.task_data import eval_sample, task_sample
from densa.config.load import load_recipe
from densa.longctx.tasks import TaskSample, TaskVocab, answer_accuracy, repeated_pair
from densa.train.callbacks import Callback
from densa.train.run import build_trainer

SEQ = 257  # 256 context tokens (split over H ∈ {2, 4} hosts) + QUERY
VOCAB = TaskVocab()
MIX = {"repeated_pair": 0.6, "mqar": 0.15, "first_occurrence": 0.15, "passkey": 0.1}


def repeated_pair_rows(batch: int, seed: int) -> TaskSample:
    """The benchmark's setting (4 keys, each twice), blocks of 2 or 4 hosts by the seed's parity."""
    return repeated_pair(batch, SEQ, 4, blocks=2 + 2 * (seed % 2), vocab=VOCAB, seed=seed)


def mixed_rows(per_step: int, seed: int) -> dict[str, torch.Tensor]:
    counts = {t: int(per_step * w) for t, w in MIX.items()}
    counts["repeated_pair"] += per_step - sum(counts.values())
    parts = [
        repeated_pair_rows(n, seed * 7 + i)
        if t == "repeated_pair"
        else task_sample(t, n, SEQ, VOCAB, seed * 7 + i)
        for i, (t, n) in enumerate(counts.items())
    ]
    labels = torch.cat([p.labels for p in parts])
    return {
        "input_ids": torch.cat([p.input_ids for p in parts]),
        "labels": labels,
        "loss_mask": (labels != -100).float(),
    }


class MixedSource:
    """Trainer `BatchSource`: one micro-batch of `per_step` mixed rows per step, seeded by the step."""

    def __init__(self, per_step: int, seed: int = 0) -> None:
        self.per_step, self.seed = per_step, seed

    def __call__(self, consumed: int) -> Iterator[list[dict[str, Any]]]:
        step = consumed // self.per_step
        while True:
            yield [mixed_rows(self.per_step, self.seed + step)]
            step += 1


def check(model: torch.nn.Module, rows: int = 128, seed: int = 5 * 10**6) -> dict[str, float]:
    """repeated_pair accuracy with full attention and with cross-block attention masked, H = 2 and 4."""
    out: dict[str, float] = {}
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for hosts in (2, 4):
            s = repeated_pair(rows, SEQ, 4, blocks=hosts, vocab=VOCAB, seed=seed + hosts)
            out[f"full_h{hosts}"] = answer_accuracy(model(s.input_ids), s)
            out[f"masked_h{hosts}"] = answer_accuracy(masked_logits(model, s.input_ids, SEQ - 1, hosts), s)
        mq = eval_sample("mqar", rows, SEQ, VOCAB, seed)
        out["mqar"] = answer_accuracy(model(mq.input_ids), mq)
    model.train(was_training)
    return out


class CheckCallback(Callback):
    """Runs `check` every `every` steps into the metrics; stops after two checks with full ≥ `solved`
    (or when the file `stop_file` appears: on a shared CPU, a run can be ended at a good check)."""

    def __init__(self, stop_file: Path, every: int = 50, solved: float = 0.97) -> None:
        self.stop_file, self.every, self.solved, self.hits, self.log = stop_file, every, solved, 0, []
        self.stopped_early = False

    def post_step(self, trainer: Any, step: int, metrics: dict[str, Any]) -> None:
        if (step + 1) % self.every:
            return
        res = check(trainer.model, rows=64)
        self.log.append({"step": step + 1} | res)
        print(json.dumps(self.log[-1]), flush=True)
        metrics.update({f"check/{k}": v for k, v in res.items()})
        self.hits = self.hits + 1 if min(res["full_h2"], res["full_h4"]) >= self.solved else 0
        if self.hits >= 2 or self.stop_file.exists():
            self.stopped_early = True
            trainer.request_stop()


class HeadRows:
    """Retaining-head rows at T = 257: even indices repeated_pair, odd MQAR (8 pairs, 4 queries)."""

    def __init__(self, num_samples: int, seed: int = 10**7) -> None:
        self.num_samples, self.seed = num_samples, seed

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, idx: int) -> dict[str, torch.Tensor]:
        seed = self.seed + idx
        s = repeated_pair_rows(1, seed // 2) if idx % 2 == 0 else eval_sample("mqar", 1, SEQ, VOCAB, seed)
        return {
            "input_ids": s.input_ids[0],
            "labels": s.labels[0],
            "loss_mask": s.answer_mask[0].float(),
            "context_mask": s.context_mask[0],
        }


def stage(cfg: Any, train_data: Any, reuse: bool, callbacks: list[Any] | None = None) -> float:
    """Train `cfg` (resuming an interrupted run in its dir; `reuse`: skip a finished one) -> seconds, summed
    over the attempts (seconds.txt marks a finished stage, seconds_partial.txt counts interrupted ones)."""
    out = Path(cfg.run.out_dir)
    done, partial = out / "seconds.txt", out / "seconds_partial.txt"
    if reuse and done.is_file():
        return float(done.read_text())
    if not reuse:
        shutil.rmtree(out, ignore_errors=True)
    before = float(partial.read_text()) if partial.is_file() else 0.0
    start = time.perf_counter()
    result = build_trainer(cfg, train_data=train_data, callbacks=callbacks or []).fit()
    seconds = before + time.perf_counter() - start
    if result.interrupted and not any(getattr(cb, "stopped_early", False) for cb in callbacks or []):
        partial.write_text(f"{seconds:.1f}\n")
        raise SystemExit(f"{out}: training was interrupted; rerun with --reuse to resume it")
    done.write_text(f"{seconds:.1f}\n")
    return seconds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reuse", action="store_true", help="keep finished stages, resume interrupted ones")
    p.add_argument("--backbone-steps", type=int, default=None, help="default: the recipe's cap")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    overrides = [f"train.steps={args.backbone_steps}"] if args.backbone_steps else []
    bb_cfg = load_recipe(RECIPES / "apb_backbone_tiny.yaml", overrides)
    callback = CheckCallback(Path(bb_cfg.run.out_dir).parent / "STOP_BACKBONE")
    callback.stop_file.unlink(missing_ok=True)
    per_step = bb_cfg.batch.global_tokens // bb_cfg.data.seq_len
    bb_seconds = stage(bb_cfg, MixedSource(per_step), args.reuse, [callback])
    model = load_backbone(bb_cfg)
    final = check(model)
    hd_cfg = load_recipe(RECIPES / "apb_heads_tiny.yaml")
    head_rows = hd_cfg.batch.global_tokens // hd_cfg.data.seq_len * hd_cfg.train.steps
    heads_seconds = stage(hd_cfg, HeadRows(head_rows), args.reuse)
    summary = {"backbone_seconds": bb_seconds, "heads_seconds": heads_seconds, "check": final}
    summary["check_log"] = callback.log
    Path(bb_cfg.run.out_dir, "check.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary["check"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
