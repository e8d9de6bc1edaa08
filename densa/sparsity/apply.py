"""Apply activation thresholds to a model through `hook_act` forward hooks, and count what stays active.

A layer threshold t is on neuron output magnitude n_i = |a_i|·‖W_down[:, i]‖; the hook compares |a_i| with the
equivalent per-neuron threshold t / ‖W_down[:, i]‖ and zeroes a_i when |a_i| ≤ it (so exact zeros, e.g. a
ReLU's, always count as inactive and threshold 0 leaves outputs unchanged).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from densa.sparsity.errors import SparsityError
from densa.sparsity.layers import FFNLayer, ffn_layers


class ActivationCounter:
    """Running per-layer counts of active (|a_i| above threshold) and total (token, neuron) pairs."""

    def __init__(self, num_layers: int) -> None:
        self.active = [0] * num_layers
        self.total = [0] * num_layers

    def add(self, layer: int, active_mask: torch.Tensor) -> None:
        self.active[layer] += int(active_mask.sum())
        self.total[layer] += active_mask.numel()

    def activation_ratio(self) -> list[float]:
        return [a / t if t else float("nan") for a, t in zip(self.active, self.total)]

    def sparsity(self) -> list[float]:
        return [1.0 - r for r in self.activation_ratio()]


def neuron_thresholds(model: nn.Module, layer_thresholds: Sequence[float]) -> list[torch.Tensor]:
    """Per-neuron thresholds t_l / ‖W_down[:, i]‖ on |a_i|; a dead neuron (zero column) gets +inf."""
    layers = ffn_layers(model)
    _check_len(layers, layer_thresholds)
    out = []
    for layer, t in zip(layers, layer_thresholds):
        norms = layer.down_norms()
        out.append(
            torch.where(norms > 0, float(t) / norms.clamp_min(1e-30), torch.full_like(norms, float("inf")))
        )
    return out


def _check_len(layers: list[FFNLayer], values: Sequence) -> None:
    if len(values) != len(layers):
        raise SparsityError(f"got {len(values)} thresholds for a model with {len(layers)} FFN layers")


@contextlib.contextmanager
def sparsify(
    model: nn.Module,
    layer_thresholds: Sequence[float] | None = None,
    *,
    per_neuron: Sequence[torch.Tensor] | None = None,
    counter: ActivationCounter | None = None,
) -> Iterator[ActivationCounter]:
    """Within the block, FFN activations with |a_i| ≤ threshold are zeroed; yields the activation counter.

    Give layer thresholds t (CETT units, e.g. `report.thresholds`) or per-neuron thresholds on |a_i|.
    """
    layers = ffn_layers(model)
    if (layer_thresholds is None) == (per_neuron is None):
        raise SparsityError("give exactly one of layer_thresholds and per_neuron")
    thresholds = neuron_thresholds(model, layer_thresholds) if per_neuron is None else list(per_neuron)
    _check_len(layers, thresholds)
    counter = counter or ActivationCounter(len(layers))
    handles = []
    for layer, thr in zip(layers, thresholds):

        def hook(_m, _i, out: torch.Tensor, j: int = layer.index, thr: torch.Tensor = thr) -> torch.Tensor:
            active = out.abs() > thr.to(device=out.device, dtype=out.dtype)
            counter.add(j, active)
            return out * active

        handles.append(layer.hook_act.register_forward_hook(hook))
    try:
        yield counter
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def count_active(model: nn.Module, threshold: float = 0.0) -> Iterator[ActivationCounter]:
    """Count |a_i| > threshold per layer without changing the forward (threshold 0 = non-zero activations)."""
    layers = ffn_layers(model)
    counter = ActivationCounter(len(layers))
    handles = [
        layer.hook_act.register_forward_hook(
            lambda _m, _i, out, j=layer.index: counter.add(j, out.detach().abs() > threshold)
        )
        for layer in layers
    ]
    try:
        yield counter
    finally:
        for h in handles:
            h.remove()
