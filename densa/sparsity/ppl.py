"""PPL-p% sparsity: bisect one CETT target c shared by all layers until perplexity rises by p% (Sparsing Law).

Inner search: per layer, the largest threshold t with CETT(t) ≤ c on cached dense activations (`LayerCETT`).
Outer search: bisect c in [0, 1] until exp(loss_sparse − loss_dense) is within tolerance of 1 + p/100.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from densa.sparsity.apply import sparsify
from densa.sparsity.calibration import collect_ffn, eval_loss, log
from densa.sparsity.cett import LayerCETT
from densa.sparsity.errors import SparsityError
from densa.sparsity.layers import ffn_layers
from densa.sparsity.report import CurvePoint, LayerSparsity, SparsityReport


def check_p(p: float) -> float:
    p = float(p)
    if not 0.0 < p < 100.0:  # also rejects NaN
        raise SparsityError(f"p must be in (0, 100) (allowed perplexity increase in percent), got {p}")
    return p


@dataclass
class BisectResult:
    knob: float
    ratio: float
    converged: bool
    curve: list[CurvePoint]
    """Every evaluated (knob, sparsity, ppl), in evaluation order."""


def bisect_ppl(
    evaluate: Callable[[float], tuple[float, float]],
    ppl_dense: float,
    p: float,
    lo: float,
    hi: float,
    *,
    increasing: bool = True,
    tol: float = 0.05,
    knob_tol: float = 1e-6,
    max_iters: int = 40,
) -> BisectResult:
    """Bisect a knob whose perplexity `evaluate(knob) -> (ppl, sparsity)` is monotone in it.

    Stops when |ppl/ppl_dense − (1 + p/100)| ≤ tol · p/100, when the bracket is narrower than knob_tol, or
    after max_iters; returns the evaluated knob closest to the target ratio.
    """
    target, slack = 1.0 + p / 100.0, tol * p / 100.0
    curve: list[CurvePoint] = []
    best: tuple[float, float, float] | None = None  # (|ratio - target|, knob, ratio)
    for _ in range(max_iters):
        mid = 0.5 * (lo + hi)
        ppl, sparsity = evaluate(mid)
        curve.append(CurvePoint(knob=mid, sparsity=sparsity, ppl=ppl))
        ratio = ppl / ppl_dense
        if best is None or abs(ratio - target) < best[0]:
            best = (abs(ratio - target), mid, ratio)
        if abs(ratio - target) <= slack or hi - lo < knob_tol:
            break
        if (ratio < target) == increasing:
            lo = mid
        else:
            hi = mid
    assert best is not None
    return BisectResult(knob=best[1], ratio=best[2], converged=best[0] <= slack, curve=curve)


class CETTSearch:
    """Cached dense activations of every FFN layer; maps a CETT target to thresholds, evaluates it."""

    def __init__(
        self,
        model: nn.Module,
        seqs: torch.Tensor,
        *,
        max_cett_tokens: int | None = 4096,
        num_candidates: int = 65536,
        batch_size: int = 8,
        seed: int = 0,
    ) -> None:
        self.model, self.seqs, self.batch_size = model, seqs, batch_size
        self.layers = ffn_layers(model)
        records = collect_ffn(model, seqs, max_tokens=max_cett_tokens, batch_size=batch_size, seed=seed)
        self.cetts, self.candidates = [], []
        for i, (a, layer) in enumerate(zip(records.acts, self.layers)):
            log.info("CETT candidates: layer %d/%d", i + 1, len(self.layers))
            self.cetts.append(LayerCETT(a, layer.down_weight))
            self.candidates.append(self.cetts[-1].candidates(num_candidates, seed=seed))
        self.loss_dense = eval_loss(model, seqs, batch_size)
        self._evaluated: dict[float, tuple[float, list[float]]] = {}

    @property
    def ppl_dense(self) -> float:
        return math.exp(self.loss_dense)

    def thresholds(self, target: float) -> list[tuple[float, float]]:
        """(t, CETT(t)) per layer for a shared CETT target."""
        return [c.search(target, cands) for c, cands in zip(self.cetts, self.candidates)]

    def evaluate(self, target: float) -> tuple[float, list[float]]:
        """(sparse ppl, per-layer sparsity) with the thresholds of `target` applied."""
        if target not in self._evaluated:
            ts = [t for t, _ in self.thresholds(target)]
            with sparsify(self.model, ts) as counter:
                loss = eval_loss(self.model, self.seqs, self.batch_size)
            self._evaluated[target] = (math.exp(loss), counter.sparsity())
            ppl, per_layer = self._evaluated[target]
            log.info(
                "CETT %.4f: ppl %.4g (dense %.4g, %+.2f%%), sparsity %.1f%%",
                target,
                ppl,
                self.ppl_dense,
                100 * (ppl / self.ppl_dense - 1),
                100 * sum(per_layer) / len(per_layer),
            )
        return self._evaluated[target]

    def point(self, target: float) -> tuple[float, float]:
        ppl, per_layer = self.evaluate(target)
        return ppl, sum(per_layer) / len(per_layer)

    def layer_stats(self, target: float) -> list[LayerSparsity]:
        _, per_layer = self.evaluate(target)
        return [
            LayerSparsity(layer=i, threshold=t, cett=c, sparsity=s)
            for i, ((t, c), s) in enumerate(zip(self.thresholds(target), per_layer))
        ]


def ppl_p_sparsity(
    model: nn.Module,
    seqs: torch.Tensor,
    p: float = 1.0,
    *,
    tol: float = 0.05,
    cett_tol: float = 1e-6,
    max_iters: int = 40,
    sweep: Sequence[float] = (),
    max_cett_tokens: int | None = 4096,
    num_candidates: int = 65536,
    batch_size: int = 8,
    seed: int = 0,
    search: CETTSearch | None = None,
) -> SparsityReport:
    """PPL-p% sparsity of `model` on `seqs` [num_seqs, seq_len + 1].

    `tol` is relative to p (0.05: the ratio must land within ±5% of p/100 of 1 + p/100); `sweep` adds CETT
    targets evaluated for the perplexity-vs-sparsity curve. `max_cett_tokens` bounds the cached activations.
    """
    p = check_p(p)
    search = search or CETTSearch(
        model,
        seqs,
        max_cett_tokens=max_cett_tokens,
        num_candidates=num_candidates,
        batch_size=batch_size,
        seed=seed,
    )
    result = bisect_ppl(
        search.point, search.ppl_dense, p, 0.0, 1.0, tol=tol, knob_tol=cett_tol, max_iters=max_iters
    )
    curve = list(result.curve)
    for c in sweep:
        ppl, s = search.point(float(c))
        curve.append(CurvePoint(knob=float(c), sparsity=s, ppl=ppl))
    config = getattr(model, "config", None)
    return SparsityReport(
        p=p,
        cett_target=result.knob,
        ppl_dense=search.ppl_dense,
        ppl_sparse=search.evaluate(result.knob)[0],
        converged=result.converged,
        num_tokens=int(seqs.shape[0] * (seqs.shape[1] - 1)),
        layers=search.layer_stats(result.knob),
        curve=sorted(curve, key=lambda pt: pt.knob),
        meta={
            "activation": getattr(config, "ffn_name", None),
            "seq_len": int(seqs.shape[1] - 1),
            "tol": tol,
            "cett_tokens": int(search.cetts[0].acts.shape[0]),
        },
    )
