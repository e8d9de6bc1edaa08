"""Locret's training loss and its "acc" metric.

Per layer: SmoothL1(predicted CIS, label) averaged over labelled tokens, summed over KV heads, plus
α·MSE between adjacent tokens' predictions (smoothness, α = 0.0025); layers are summed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SMOOTHNESS_ALPHA = 0.0025


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x [B, H, T], mask [B, T] -> per-head mean over masked tokens, summed over heads."""
    weight = mask[:, None, :].to(x.dtype)
    per_head = (x * weight).sum(dim=(0, 2)) / weight.sum(dim=(0, 2)).clamp_min(1.0)
    return per_head.sum()


def layer_loss(
    pred: torch.Tensor, label: torch.Tensor, mask: torch.Tensor, alpha: float = SMOOTHNESS_ALPHA
) -> torch.Tensor:
    """pred, label [B, H, T]; mask [B, T] marks labelled tokens (labels elsewhere may be -inf)."""
    target = torch.where(mask[:, None, :], label, torch.zeros_like(label)).to(pred.dtype)
    regression = _masked_mean(F.smooth_l1_loss(pred, target, reduction="none"), mask)
    pair_mask = mask[:, 1:] & mask[:, :-1]
    smooth = _masked_mean((pred[..., 1:] - pred[..., :-1]).square(), pair_mask)
    return regression + alpha * smooth


def retaining_loss(
    preds: list[torch.Tensor],
    labels: list[torch.Tensor],
    mask: torch.Tensor,
    alpha: float = SMOOTHNESS_ALPHA,
) -> torch.Tensor:
    """Sum over layers of `layer_loss`."""
    return sum(layer_loss(p, y, mask, alpha) for p, y in zip(preds, labels, strict=True))


@torch.no_grad()
def topk_overlap(pred: torch.Tensor, label: torch.Tensor, mask: torch.Tensor, frac: float = 0.1) -> float:
    """Mean over (row, head) of |top-frac(pred) ∩ top-frac(label)| / k among labelled tokens."""
    scores: list[float] = []
    for b in range(pred.shape[0]):
        idx = mask[b].nonzero().squeeze(-1)
        k = max(1, int(frac * idx.numel()))
        if idx.numel() == 0:
            continue
        for h in range(pred.shape[1]):
            top_pred = set(idx[pred[b, h, idx].topk(k).indices].tolist())
            top_label = set(idx[label[b, h, idx].topk(k).indices].tolist())
            scores.append(len(top_pred & top_label) / k)
    return sum(scores) / max(1, len(scores))
