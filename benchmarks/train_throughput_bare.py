"""The bare-PyTorch side of benchmarks/train_throughput.py: one process, no engine, no callbacks.

python -m benchmarks.train_throughput_bare RECIPE STEPS SKIP   → prints a JSON list of step times
"""

from __future__ import annotations

import json
import sys
import time

import torch


def main(recipe: str, steps: int, skip: int) -> list[float]:
    from densa.config.checks import derived_batch
    from densa.config.load import load_recipe
    from densa.models import Transformer, causal_lm_loss
    from densa.train.data import load_run_tokenizer, train_source
    from densa.train.engine import param_groups
    from densa.train.schedules import build_lr_lambda

    cfg = load_recipe(recipe, [f"train.steps={steps}", "schedule.warmup_steps=2"])
    batch = derived_batch(cfg, 1)
    torch.manual_seed(cfg.run.seed)
    model = Transformer(cfg.model).train()
    optimizer = torch.optim.AdamW(
        param_groups(model, cfg.optim.weight_decay), lr=cfg.optim.lr, betas=cfg.optim.betas, eps=cfg.optim.eps
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, build_lr_lambda(cfg.schedule, steps))
    source = train_source(cfg, batch.global_samples, batch.micro_batch, 0, 1, load_run_tokenizer(cfg))
    batches = source(0)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        for micro in next(batches):
            loss = causal_lm_loss(model(micro["input_ids"]), micro["labels"], micro.get("loss_mask"))
            (loss / batch.grad_accum).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()  # the trainer reads the loss every step too
        times.append(time.perf_counter() - start)
    return times[skip:]


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))))
