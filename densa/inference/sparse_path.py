"""The sparse-FFN decode path: per-layer CETT thresholds, FFN forward through `densa.kernels.sparse_ffn`.

Only single-token decode steps ([B, 1, dim]) take the sparse kernel; prefill (many tokens) stays dense,
where a gather saves nothing. Thresholds are CETT layer thresholds t on neuron output magnitude
n_i = |a_i|·‖W_down[:, i]‖ (densa.sparsity), turned into per-neuron thresholds t / ‖W_down[:, i]‖ on the
activation. The kernel applies them to |act(gate_i)| (plain FFN: |act(up_i)| = |a_i|, exactly CETT's rule;
gated FFN: the gate alone, since thresholding a_i = act(gate_i)·up_i would need every up row). At t = 0 both
rules keep exactly the non-zero neurons, so a ReLU model's sparse output equals its dense output.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import nn

from densa.kernels import SparseFFNWeights, sparse_ffn
from densa.models.ffn import FeedForward
from densa.models.transformer import Transformer
from densa.sparsity import SparsityReport, neuron_thresholds


class SparseDecodeFFN(nn.Module):
    """Wraps a dense FeedForward: dense for prefill, `sparse_ffn` with thresholds for one-token steps."""

    def __init__(
        self, dense: nn.Module, thresholds: torch.Tensor, backend: str = "auto", track: bool = False
    ) -> None:
        super().__init__()
        self.dense = dense
        first = dense.gate_up_proj.weight if dense.gated else dense.up_proj.weight
        self.weights = SparseFFNWeights.from_dense(first, dense.down_proj.weight, dense.gated)
        self.register_buffer("thresholds", thresholds.float().to(first.device), persistent=False)
        self.activation, self.backend, self.track = dense.activation, backend, track
        self.active = 0  # active (token, neuron) pairs over sparse steps, for the activation ratio
        self.total = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or x.shape[1] != 1:
            return self.dense(x)
        if self.track:  # recomputes the gate projection: off when timing
            self._count(x)
        return sparse_ffn(x, self.weights, self.thresholds, activation=self.activation, backend=self.backend)

    def _count(self, x: torch.Tensor) -> None:
        gate = x.reshape(-1, self.weights.dim).to(self.weights.dtype) @ self.weights.gate.T
        act = self.dense.act_fn(gate)
        self.active += int((act.abs() > self.thresholds.to(act.dtype)).sum())
        self.total += act.numel()


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
    model: Transformer, layer_thresholds: Sequence[float], backend: str = "auto", track: bool = False
) -> Iterator[list[SparseDecodeFFN]]:
    """Within the block every layer's FFN runs sparse for single-token steps; restored on exit."""
    if any(type(block.ffn) is not FeedForward for block in model.layers):
        raise NotImplementedError(
            "the sparse-FFN path needs dense FeedForward layers; an MoE model runs its own top-k experts"
        )
    per_neuron = neuron_thresholds(model, list(layer_thresholds))
    originals = [block.ffn for block in model.layers]
    wrappers = [SparseDecodeFFN(ffn, t, backend, track) for ffn, t in zip(originals, per_neuron, strict=True)]
    try:
        for block, wrapper in zip(model.layers, wrappers, strict=True):
            block.ffn = wrapper
        yield wrappers
    finally:
        for block, ffn in zip(model.layers, originals, strict=True):
            block.ffn = ffn
