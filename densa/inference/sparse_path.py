"""The sparse-FFN decode path: per-layer CETT thresholds, FFN forward through `densa.kernels.sparse_ffn`.

Only single-token decode steps ([B, 1, dim]) take the sparse kernel; prefill (many tokens) stays dense,
where a gather saves nothing. Thresholds are CETT layer thresholds t on neuron output magnitude
n_i = |a_i|·‖W_down[:, i]‖ (densa.sparsity), turned into per-neuron thresholds t / ‖W_down[:, i]‖ on the
activation. The kernel applies them to |act(gate_i)| (plain FFN: |act(up_i)| = |a_i|, exactly CETT's rule;
gated FFN: the gate alone, since thresholding a_i = act(gate_i)·up_i would need every up row). At t = 0 both
rules keep exactly the non-zero neurons, so a ReLU model's sparse output equals its dense output.

With a low-rank predictor per layer (densa.sparsity.fit_predictors, Deja Vu), the predicted set (logit ≥ 0,
union over the batch) is the only part of every FFN weight that is read, gate/up included; the thresholds
then filter that set. A neuron the predictor misses counts as zero, so outputs are exact only at recall 1.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import nn

from densa.kernels import SparseFFNWeights, native_cpu, sparse_ffn
from densa.models.ffn import FeedForward
from densa.models.transformer import Transformer
from densa.sparsity import SparsityReport, neuron_thresholds


class SparseDecodeFFN(nn.Module):
    """Wraps a dense FeedForward: dense for prefill, `sparse_ffn` with thresholds for one-token steps."""

    def __init__(
        self,
        dense: nn.Module,
        thresholds: torch.Tensor,
        backend: str = "auto",
        track: bool = False,
        predictor: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.predictor = predictor
        self.dense = dense
        first = dense.gate_up_proj.weight if dense.gated else dense.up_proj.weight
        self.weights = SparseFFNWeights.from_dense(first, dense.down_proj.weight, dense.gated)
        self.register_buffer("thresholds", thresholds.float().to(first.device), persistent=False)
        self.activation, self.backend, self.track = dense.activation, backend, track
        self.fused = self._prepare_fused()
        # Counted over sparse steps when tracking, as (token, neuron) pairs: truly active (the threshold
        # rule on the dense gate), read (predicted set; every neuron without a predictor) and both.
        self.active = self.read = self.hits = self.total = 0

    def _prepare_fused(self) -> native_cpu.ThresholdFFN | None:
        """One native call per decode step when it computes exactly what sparse_ffn would (CPU, fp32)."""
        w = self.weights
        if (
            self.backend not in ("auto", "torch")
            or self.activation not in native_cpu.FUSED_ACTIVATIONS
            or not native_cpu.supports(w.first, w.down_t)
            or not native_cpu.available()
        ):
            return None
        if self.predictor is None:
            return native_cpu.ThresholdFFN(w.gate, w.up, w.down_t, self.thresholds, self.activation)
        p_down = getattr(getattr(self.predictor, "down", None), "weight", None)
        p_up = getattr(getattr(self.predictor, "up", None), "weight", None)
        if p_down is None or p_up is None or not native_cpu.supports(p_down, p_up):
            return None  # not a fp32 LowRankPredictor: the generic path runs it
        return native_cpu.PredictedFFN(p_down, p_up, w.gate, w.up, w.down_t, self.thresholds, self.activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or x.shape[1] != 1:
            return self.dense(x)
        # Tracking needs the predicted set itself, so it takes the generic path (same result).
        fused_ok = self.fused is not None and x.shape[0] == 1 and native_cpu.supports(x)
        if fused_ok and (self.predictor is None or not self.track):
            if self.track:
                self._count(x, None)
            return self.fused(x.reshape(-1)).view(1, 1, -1)  # type: ignore[misc]
        idx = None
        if self.predictor is not None:
            logits = self.predictor(x.reshape(-1, self.weights.dim))  # [B, ffn_dim]
            idx = (logits >= 0).any(dim=0).nonzero().squeeze(1)
        if self.track:  # recomputes the gate projection: off when timing
            self._count(x, idx)
        return sparse_ffn(
            x, self.weights, self.thresholds, active_idx=idx, activation=self.activation, backend=self.backend
        )

    def _count(self, x: torch.Tensor, idx: torch.Tensor | None) -> None:
        gate = x.reshape(-1, self.weights.dim).to(self.weights.dtype) @ self.weights.gate.T
        act = self.dense.act_fn(gate)
        active = act.abs() > self.thresholds.to(act.dtype)  # [B, ffn_dim]
        read = torch.ones_like(active) if idx is None else torch.zeros_like(active)
        if idx is not None:
            read[:, idx] = True
        self.active += int(active.sum())
        self.read += int(read.sum())
        self.hits += int((active & read).sum())
        self.total += act.numel()

    @property
    def recall(self) -> float:
        """Fraction of truly active (token, neuron) pairs that were read (1 without a predictor)."""
        return self.hits / max(self.active, 1)


def layer_thresholds_from(source: SparsityReport | str | os.PathLike | Sequence[float]) -> list[float]:
    """Layer thresholds t from a SparsityReport, a `sparsity.json` path, or a list of floats."""
    if isinstance(source, SparsityReport):
        return source.thresholds
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: sparsity report not found")
        return SparsityReport.from_dict(json.loads(path.read_text(encoding="utf-8"))).thresholds
    return [float(t) for t in source]


def calibrate(
    model: Transformer, seqs: torch.Tensor, *, p: float | None = None, cett_target: float | None = None
) -> list[float]:
    """Layer thresholds by CETT on calibration sequences [N, seq_len + 1]: PPL-p% (`p`) or a fixed target."""
    from densa.sparsity import CETTSearch, ppl_p_sparsity

    if (p is None) == (cett_target is None):
        raise ValueError("give exactly one of p (PPL-p% search) and cett_target")
    if p is not None:
        return ppl_p_sparsity(model, seqs, p).thresholds
    return [t for t, _ in CETTSearch(model, seqs).thresholds(float(cett_target))]


@contextlib.contextmanager
def sparse_ffn_installed(
    model: Transformer,
    layer_thresholds: Sequence[float],
    backend: str = "auto",
    track: bool = False,
    predictors: Sequence[nn.Module] | None = None,
) -> Iterator[list[SparseDecodeFFN]]:
    """Within the block every layer's FFN runs sparse for single-token steps; restored on exit.

    predictors: one per layer (`densa.sparsity.fit_predictors` / `load_predictors`), or None for the
    threshold path (gate read densely).
    """
    if any(type(block.ffn) is not FeedForward for block in model.layers):
        raise NotImplementedError(
            "the sparse-FFN path needs dense FeedForward layers; an MoE model runs its own top-k experts"
        )
    # FATReLU (T > 0): |a_i| > t with a_i = FATReLU(g_i) iff g_i > max(t, T); the kernels apply plain ReLU.
    fat = model.config.activation_threshold
    per_neuron = [t.clamp_min(fat) for t in neuron_thresholds(model, list(layer_thresholds))]
    originals = [block.ffn for block in model.layers]
    if predictors is not None and len(predictors) != len(originals):
        raise ValueError(f"{len(predictors)} predictors for {len(originals)} layers")
    per_layer = predictors if predictors is not None else [None] * len(originals)
    wrappers = [
        SparseDecodeFFN(ffn, t, backend, track, p)
        for ffn, t, p in zip(originals, per_neuron, per_layer, strict=True)
    ]
    try:
        for block, wrapper in zip(model.layers, wrappers, strict=True):
            block.ffn = wrapper
        yield wrappers
    finally:
        for block, ffn in zip(model.layers, originals, strict=True):
            block.ffn = ffn
