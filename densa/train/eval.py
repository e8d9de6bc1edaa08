"""Validation loss and perplexity: token-weighted over the given batches (and, in training, DP ranks)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping

import torch

from densa.models.loss import causal_lm_loss

PACKED_KEYS = ("position_ids", "doc_ids")


def packed_inputs(batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The model keywords of a packed SFT batch (`densa.data.packing`); {} for any other batch."""
    return {k: batch[k] for k in PACKED_KEYS if k in batch}


@torch.no_grad()
def loss_sums(
    model: Callable[..., torch.Tensor],
    batches: Iterable[Mapping[str, torch.Tensor]],
    device: torch.device | str,
) -> torch.Tensor:
    """float64 [sum of token losses, number of tokens] over `batches` (loss_mask and -100 respected)."""
    total = torch.zeros(2, dtype=torch.float64)
    for batch in batches:
        ids, labels = batch["input_ids"].to(device), batch["labels"].to(device)
        mask = batch.get("loss_mask")
        mask = torch.ones_like(labels, dtype=torch.float32) if mask is None else mask.to(device).float()
        mask = mask * (labels != -100)
        n = float(mask.sum())
        extra = {k: v.to(device) for k, v in packed_inputs(batch).items()}
        loss = causal_lm_loss(model(ids, **extra), labels, mask)
        total += torch.tensor([float(loss) * n, n], dtype=torch.float64)
    return total


def summarize(total_loss: float, tokens: float, prefix: str = "val") -> dict[str, float]:
    loss = total_loss / max(tokens, 1.0)
    return {f"{prefix}/loss": loss, f"{prefix}/ppl": math.exp(min(loss, 50.0)), f"{prefix}/tokens": tokens}


def evaluate_model(
    model: torch.nn.Module, batches: Iterable[Mapping[str, torch.Tensor]], prefix: str = "val"
) -> dict[str, float]:
    """Single-process validation of a plain model (what `densa eval` runs)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total = loss_sums(model, batches, device)
    model.train(was_training)
    return summarize(total[0].item(), total[1].item(), prefix)
