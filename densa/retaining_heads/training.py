"""Training retaining heads on a frozen backbone: the loss (shaped as the trainer's LossFn), a standalone
loop for tests and benchmarks, and a callback for `densa.train`.

One full forward gives both the targets (CIS labels from the captured post-RoPE Q/K, no grad) and the
predictions (the heads' scores, with grad). Batches are dicts with `input_ids` [B, T], `answer_mask`
[B, T] (bool; an SFT batch's `loss_mask` serves too) and optionally `context_mask` [B, T] (default:
tokens before the first answer token).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from densa.errors import DensaError
from densa.models.transformer import Transformer
from densa.retaining_heads.heads import HEADS_ATTR, RetainingHeads, attach_heads, get_heads
from densa.retaining_heads.io import save_heads
from densa.retaining_heads.labels import capture_qk, cis_labels, default_context_mask, label_mask
from densa.retaining_heads.loss import SMOOTHNESS_ALPHA, retaining_loss, topk_overlap
from densa.train.callbacks import Callback

# The trainer (densa.train.loop.Trainer) is duck-typed: analysis packages may import only
# densa.train.callbacks. Used: trainer.engine.module, trainer.is_main, trainer.run_dir.
Trainer = Any

Batch = dict[str, torch.Tensor]

GRAD_CLIP = 1.0
"""Global gradient-norm clip of `train_heads`: the default of the recipe's `optim.grad_clip`, which the
engine applies to a `retaining_heads:` run, so both routes clip alike. (Locret clips by value at 0.5;
DeepSpeed clips by norm for every ZeRO stage and precision, so norm is the one rule.)"""


def freeze_backbone(model: Transformer) -> list[str]:
    """requires_grad only on the retaining heads; returns the names of the trainable parameters."""
    get_heads(model)
    trainable = []
    for name, param in model.named_parameters():
        is_head = name.startswith(HEADS_ATTR + ".")
        param.requires_grad_(is_head)
        if is_head:
            trainable.append(name)
    return trainable


def prepare_for_head_training(model: Transformer, hidden: int = 1024) -> RetainingHeads:
    """Attach fresh heads and freeze everything else (call before the optimizer is built)."""
    heads = attach_heads(model, hidden=hidden)
    freeze_backbone(model)
    return heads


def _unwrap(model: Callable[..., torch.Tensor]) -> Transformer:
    """The Transformer behind a DeepSpeed engine (`.module`) or the model itself."""
    return getattr(model, "module", model)  # type: ignore[return-value]


def heads_loss(
    model: Callable[..., torch.Tensor],
    batch: Batch,
    alpha: float = SMOOTHNESS_ALPHA,
    with_stats: bool = False,
    answer_tokens: int | None = None,
) -> torch.Tensor:
    """Retaining-head loss for one batch; shaped as the trainer's LossFn `(model, batch) -> loss`.

    `answer_tokens` (token-level text, e.g. `.bin/.idx` rows): the last this many positions of every row
    are the answer queries and everything before is context, whatever masks the batch carries (a
    pretraining batch's loss_mask is all ones). `model` may be a DeepSpeed engine: it is called for the
    forward so ZeRO gathers parameters. The last batch's statistics are left in `heads.last_stats`.
    """
    ids = batch["input_ids"]
    if answer_tokens is not None:
        if not 0 < answer_tokens < ids.shape[1]:
            raise DensaError(
                f"answer_tokens must be in [1, {ids.shape[1]}) for rows of {ids.shape[1]} tokens"
            )
        answer = torch.zeros_like(ids, dtype=torch.bool)
        answer[:, -answer_tokens:] = True  # Locret holds its question back: the tail after the context
        batch = {"input_ids": ids, "answer_mask": answer}
    # An SFT batch's loss_mask marks the positions that predict the response: Locret's answer queries.
    answer = batch.get("answer_mask", batch.get("loss_mask"))
    if answer is None:
        raise DensaError("retaining-head batches need an `answer_mask` (or SFT `loss_mask`) [B, T]")
    backbone = _unwrap(model)
    heads = get_heads(backbone)
    answer = answer.bool()
    context = batch.get("context_mask")
    context = default_context_mask(answer) if context is None else context.bool()
    heads.clear()
    with capture_qk(backbone) as qk:
        model(batch["input_ids"])
    labels = [cis_labels(r["q"], r["k"], answer) for r in qk]
    preds = [s for s in heads.scores if s is not None]
    mask = label_mask(labels[0], context)
    loss = retaining_loss(preds, labels, mask, alpha)
    stats: dict[str, float] = {"cis_loss": float(loss.detach())}
    if with_stats:
        stats["cis_top10_overlap"] = sum(
            topk_overlap(p.detach().float(), y, mask) for p, y in zip(preds, labels, strict=True)
        ) / len(preds)
    heads.last_stats = stats
    heads.clear()
    return loss


def _lr_lambda(steps: int, warmup: int) -> Callable[[int], float]:
    """Linear warmup over `warmup` steps, then linear decay to 0 at `steps` (Locret: 2000 of 3000)."""

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (steps - step) / max(1, steps - warmup))

    return f


def train_heads(
    model: Transformer,
    batches: Iterable[Batch],
    steps: int,
    lr: float = 5e-4,
    *,
    hidden: int = 1024,
    warmup_frac: float = 2 / 3,
    grad_clip: float = GRAD_CLIP,
    alpha: float = SMOOTHNESS_ALPHA,
    log_every: int = 0,
    answer_tokens: int | None = None,
) -> list[dict[str, float]]:
    """Train heads (attached, or attached here with `hidden` units) on a frozen backbone.

    AdamW β=(0.9, 0.95), linear warmup then linear decay; `batches` is cycled. Gradients are clipped as a
    `retaining_heads:` recipe clips them: to global norm `grad_clip` (the recipe's `optim.grad_clip`, same
    default; 0 disables). Returns per-step stats (`cis_loss`, plus `cis_top10_overlap` every `log_every`
    steps). `answer_tokens`: as in `heads_loss`, for token-level rows without answer masks.
    """
    if steps <= 0:
        raise DensaError(f"train_heads: steps must be > 0, got {steps}")
    if not hasattr(model, HEADS_ATTR):
        attach_heads(model, hidden=hidden)
    trainable = freeze_backbone(model)
    heads = get_heads(model)
    params = [p for n, p in model.named_parameters() if n in set(trainable)]
    optimizer = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(steps, int(warmup_frac * steps)))
    history = []
    heads.train()
    for step, batch in enumerate(itertools.islice(itertools.cycle(batches), steps)):
        with_stats = bool(log_every) and (step % log_every == 0 or step == steps - 1)
        loss = heads_loss(model, batch, alpha, with_stats=with_stats, answer_tokens=answer_tokens)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip > 0:
            nn.utils.clip_grad_norm_(params, grad_clip)
        optimizer.step()
        schedule.step()
        history.append({"step": step, **heads.last_stats})
    heads.eval()
    return history


class RetainingHeadsCallback(Callback):
    """For a `densa.train` run whose loss_fn is `heads_loss` and whose model went through
    `prepare_for_head_training`: checks the setup, logs CIS metrics, writes the heads at the end."""

    def __init__(self, out_file: str = "retaining_heads.safetensors", stats_every: int = 50) -> None:
        self.out_file = out_file
        self.stats_every = stats_every

    def on_train_start(self, trainer: Trainer) -> None:
        model = trainer.engine.module
        get_heads(model)
        loose = [n for n, p in model.named_parameters() if p.requires_grad and not n.startswith(HEADS_ATTR)]
        if loose:
            raise DensaError(f"retaining-head training needs a frozen backbone; trainable: {loose[:3]}")

    def post_step(self, trainer: Trainer, step: int, metrics: dict[str, Any]) -> None:
        metrics.update(getattr(get_heads(trainer.engine.module), "last_stats", {}))

    def on_train_end(self, trainer: Trainer, step: int) -> None:
        # A failed run leaves no heads file: it would look like a finished one.
        if trainer.is_main and getattr(trainer, "error", None) is None:
            save_heads(Path(trainer.run_dir) / self.out_file, trainer.engine.module)
