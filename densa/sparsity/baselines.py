"""Top-k and FAT-ε baselines (Sparsing Law code): masks chosen from |σ(gate)| rather than from CETT.

Top-k keeps the fraction k of neurons with the largest score in every token; FAT-ε zeroes neurons whose
score is below ε. The score is |act(gate pre-activation)| for gated FFNs and |a| for plain ones (there the
two coincide); `score="act"` uses |a| for both. Either way the mask is applied to the activations a
that feed W_down.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator

import torch
from torch import nn

from densa.sparsity.apply import ActivationCounter
from densa.sparsity.calibration import eval_loss, log
from densa.sparsity.errors import SparsityError
from densa.sparsity.layers import ffn_layers
from densa.sparsity.ppl import bisect_ppl, check_p
from densa.sparsity.report import BaselineResult

Masker = Callable[[torch.Tensor], torch.Tensor]  # score [..., ffn_dim] -> keep mask (bool)


def topk_mask(score: torch.Tensor, k: float) -> torch.Tensor:
    """Keep round(k · ffn_dim) largest scores per token."""
    keep = round(min(max(k, 0.0), 1.0) * score.shape[-1])
    mask = torch.zeros_like(score, dtype=torch.bool)
    if keep:
        mask.scatter_(-1, score.topk(keep, dim=-1).indices, True)
    return mask


def fat_mask(score: torch.Tensor, eps: float) -> torch.Tensor:
    """Keep scores ≥ ε (FAT-ε zeroes |σ(gate)| < ε)."""
    return score >= eps


@contextlib.contextmanager
def masked(model: nn.Module, masker: Masker, *, score: str = "gate") -> Iterator[ActivationCounter]:
    """Zero the FFN activations the masker rejects; yields a per-layer activation counter."""
    if score not in ("gate", "act"):
        raise SparsityError(f"score must be 'gate' or 'act', got {score!r}")
    layers = ffn_layers(model)
    counter = ActivationCounter(len(layers))
    handles = []
    for layer in layers:
        gated = score == "gate" and getattr(layer.module, "gated", False)
        if gated and layer.hook_pre_act is None:
            raise SparsityError(f"{layer.name} is gated but has no hook_pre_act to read the gate from")
        stash: dict[str, torch.Tensor] = {}
        if gated:
            act_fn = layer.module.act_fn

            def pre_hook(_m, _i, out, stash=stash, act_fn=act_fn) -> None:
                stash["score"] = act_fn(out).abs()

            handles.append(layer.hook_pre_act.register_forward_hook(pre_hook))

        def act_hook(_m, _i, out, j=layer.index, stash=stash, gated=gated) -> torch.Tensor:
            mask = masker(stash.pop("score") if gated else out.abs())
            counter.add(j, mask)
            return out * mask

        handles.append(layer.hook_act.register_forward_hook(act_hook))
    try:
        yield counter
    finally:
        for h in handles:
            h.remove()


def topk(model: nn.Module, k: float, *, score: str = "gate") -> contextlib.AbstractContextManager:
    return masked(model, lambda s: topk_mask(s, k), score=score)


def fat(model: nn.Module, eps: float, *, score: str = "gate") -> contextlib.AbstractContextManager:
    return masked(model, lambda s: fat_mask(s, eps), score=score)


def baseline_ppl_p(
    model: nn.Module,
    seqs: torch.Tensor,
    method: str,
    p: float = 1.0,
    *,
    score: str = "gate",
    tol: float = 0.05,
    max_iters: int = 30,
    batch_size: int = 8,
    ppl_dense: float | None = None,
) -> BaselineResult:
    """Bisect k (top-k) or ε (FAT) until perplexity rises by p%; sparsity is measured on the same forward."""
    p = check_p(p)
    if method not in ("topk", "fat"):
        raise SparsityError(f"baseline method must be 'topk' or 'fat', got {method!r}")
    ppl_dense = ppl_dense or math.exp(eval_loss(model, seqs, batch_size))

    def evaluate(knob: float) -> tuple[float, float]:
        ctx = topk(model, knob, score=score) if method == "topk" else fat(model, knob, score=score)
        with ctx as counter:
            loss = eval_loss(model, seqs, batch_size)
        s = counter.sparsity()
        log.info("%s %.4g: ppl %.4g, sparsity %.1f%%", method, knob, math.exp(loss), 100 * sum(s) / len(s))
        return math.exp(loss), sum(s) / len(s)

    if method == "topk":  # keeping more (larger k) lowers perplexity
        lo, hi, increasing = 0.0, 1.0, False
    else:  # ε up to the largest score seen prunes everything
        lo, hi, increasing = 0.0, _max_score(model, seqs, score, batch_size), True
    r = bisect_ppl(evaluate, ppl_dense, p, lo, hi, increasing=increasing, tol=tol, max_iters=max_iters)
    point = next(pt for pt in r.curve if pt.knob == r.knob)
    return BaselineResult(
        method=method,
        knob=r.knob,
        sparsity=point.sparsity,
        ppl=point.ppl,
        ppl_ratio=r.ratio,
        converged=r.converged,
        curve=sorted(r.curve, key=lambda pt: pt.knob),
    )


def _max_score(model: nn.Module, seqs: torch.Tensor, score: str, batch_size: int) -> float:
    """Largest score on the data: the ε that prunes every neuron."""
    maxima: list[float] = [0.0]

    def record(s: torch.Tensor) -> torch.Tensor:
        maxima.append(float(s.max()))
        return torch.ones_like(s, dtype=torch.bool)

    with masked(model, record, score=score):
        eval_loss(model, seqs, batch_size)
    return max(maxima)
