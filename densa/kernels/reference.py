"""Input checks, activations and the dense masked reference every sparse path is tested against.

Semantics shared by all paths, per token b and neuron i (gate = the gate projection of a gated FFN, the up
projection of a plain one):
    active[b, i] = (i in active_idx, if given) and (|act(gate[b, i])| > t_i, if thresholds are given)
    h[b, i]      = act(gate[b, i]) * up[b, i]   (gated)  or  act(gate[b, i])   (plain),  0 where inactive
    out[b]       = sum_i h[b, i] * down_t[i]
So a batch shares the union of active rows while every token keeps its own exact mask.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from densa.kernels.weights import SparseFFNWeights

# Same names and formulas as densa.models.activations (kernels may not import models; a test checks parity).
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": F.relu,
    "relu2": lambda v: F.relu(v).square(),
    "silu": F.silu,
    "gelu": F.gelu,
    "gelu_tanh": lambda v: F.gelu(v, approximate="tanh"),
}

Thresholds = float | torch.Tensor | None


def get_activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose from {sorted(ACTIVATIONS)}") from None


def check_inputs(
    x: torch.Tensor,
    weights: SparseFFNWeights,
    thresholds: Thresholds,
    active_idx: torch.Tensor | None,
    activation: str,
) -> None:
    """Raise ValueError for calls that are wrong on every backend (shape, activation, index range)."""
    get_activation(activation)
    if x.shape[-1:] != (weights.dim,):
        raise ValueError(f"x's last dimension must be dim={weights.dim}, got shape {tuple(x.shape)}")
    if thresholds is None and active_idx is None:
        raise ValueError("give thresholds (exact gate threshold), active_idx (predicted active set), or both")
    if isinstance(thresholds, torch.Tensor) and thresholds.numel() not in (1, weights.ffn_dim):
        raise ValueError(f"thresholds must be a scalar or have ffn_dim={weights.ffn_dim} entries")
    if isinstance(thresholds, float | int) and not math.isfinite(thresholds):
        raise ValueError(f"threshold must be finite, got {thresholds}")
    if active_idx is not None:
        if active_idx.dim() != 1 or active_idx.dtype not in (torch.int32, torch.int64):
            raise ValueError("active_idx must be a 1-D int32/int64 tensor of neuron indices")
        # Checked where it costs no device sync; on CUDA, out-of-range rows are masked off by the kernels.
        if active_idx.device.type == "cpu" and active_idx.numel():
            lo, hi = int(active_idx.min()), int(active_idx.max())
            if lo < 0 or hi >= weights.ffn_dim:
                raise ValueError(f"active_idx must lie in [0, {weights.ffn_dim}), got [{lo}, {hi}]")
            if torch.unique(active_idx).numel() != active_idx.numel():
                raise ValueError("active_idx must not repeat a neuron (it would be counted twice)")


def threshold_vector(thresholds: Thresholds, ffn_dim: int, device: torch.device) -> torch.Tensor | None:
    """Thresholds as an fp32 [ffn_dim] view (a stride-0 expand for a scalar: no copy)."""
    if thresholds is None:
        return None
    t = torch.as_tensor(thresholds, dtype=torch.float32, device=device).reshape(-1)
    return t.expand(ffn_dim) if t.numel() == 1 else t


def compute_dtype(x_dtype: torch.dtype, w_dtype: torch.dtype) -> torch.dtype:
    """The promoted dtype, or float32 for integer inputs (an FFN output is not integral)."""
    dtype = torch.promote_types(x_dtype, w_dtype)
    return dtype if dtype.is_floating_point else torch.float32


def neuron_mask(
    act_gate: torch.Tensor, thresholds: Thresholds, active_idx: torch.Tensor | None
) -> torch.Tensor:
    """Bool [N, ffn_dim]: which neuron each token keeps, from act(gate) [N, ffn_dim]."""
    mask = torch.ones_like(act_gate, dtype=torch.bool)
    if active_idx is not None:
        in_set = torch.zeros(act_gate.shape[-1], dtype=torch.bool, device=act_gate.device)
        in_set[active_idx.long()] = True
        mask &= in_set
    t = threshold_vector(thresholds, act_gate.shape[-1], act_gate.device)
    if t is not None:
        mask &= act_gate.abs() > t.to(act_gate.dtype)
    return mask


def sparse_ffn_reference(
    x: torch.Tensor,
    weights: SparseFFNWeights,
    thresholds: Thresholds = None,
    active_idx: torch.Tensor | None = None,
    activation: str = "relu",
) -> torch.Tensor:
    """Dense masked computation: every projection in full, then the mask. Slow by design, any dtype/device."""
    check_inputs(x, weights, thresholds, active_idx, activation)
    dtype = compute_dtype(x.dtype, weights.dtype)
    x2 = x.reshape(-1, weights.dim).to(dtype)
    gate_w, down_t = weights.gate.to(dtype), weights.down_t.to(dtype)
    act_gate = get_activation(activation)(x2 @ gate_w.T)
    mask = neuron_mask(act_gate, thresholds, active_idx)
    h = act_gate * (x2 @ weights.up.to(dtype).T) if weights.gated else act_gate
    h = torch.where(mask, h, torch.zeros((), dtype=dtype, device=h.device))
    return (h @ down_t).reshape(*x.shape[:-1], weights.dim)
