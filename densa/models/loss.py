"""Next-token cross-entropy with an optional loss mask (SFT: loss on response tokens only)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def causal_lm_loss(
    logits: torch.Tensor, labels: torch.Tensor, loss_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean CE over unmasked tokens. logits [B, T, V]; labels [B, T] already shifted (label t = token t+1).

    Labels equal to -100 are ignored, as in HF; an all-masked batch gives 0 (not NaN) so it can be skipped.
    """
    flat_logits = logits.reshape(-1, logits.shape[-1]).float()
    flat_labels = labels.reshape(-1)
    if loss_mask is None:
        return F.cross_entropy(flat_logits, flat_labels, ignore_index=-100)
    per_token = F.cross_entropy(flat_logits, flat_labels, ignore_index=-100, reduction="none")
    mask = loss_mask.reshape(-1).to(per_token.dtype) * (flat_labels != -100).to(per_token.dtype)
    return (per_token * mask).sum() / mask.sum().clamp_min(1.0)
