"""Test cases shared by the in-process tests and the TRITON_INTERPRET=1 subprocess (no triton import here).

Thresholds are placed in the widest gap of the sorted |act(gate)| values near the target sparsity, so that
fp32 rounding differences between paths cannot flip a neuron across the threshold.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from densa.kernels import ACTIVATIONS, SparseFFNWeights


@dataclass(frozen=True)
class Case:
    gated: bool
    activation: str
    batch: int
    mode: str  # "thr", "idx", "both" or "thr_vec" (per-neuron thresholds)
    sparsity: float
    dim: int = 64
    ffn_dim: int = 200  # not a multiple of the 16-neuron blocks
    split_k: int | None = None  # 1: the atomic-free loop variant of the down kernel

    @property
    def id(self) -> str:
        kind = "gated" if self.gated else "plain"
        split = "" if self.split_k is None else f"-split{self.split_k}"
        return f"{kind}-{self.activation}-b{self.batch}-{self.mode}-s{self.sparsity}-f{self.ffn_dim}{split}"


def gap_threshold(values: torch.Tensor, sparsity: float) -> float:
    """A threshold leaving about `sparsity` of |values| at or below it, in the widest nearby gap."""
    if sparsity <= 0:
        return -1.0
    v = values.abs().flatten().sort().values.double()
    if sparsity >= 1:
        return float(v[-1]) + 1.0
    k, win = int(sparsity * v.numel()), max(2, v.numel() // 20)
    lo, hi = max(0, k - win), min(v.numel() - 1, k + win)
    gaps = v[lo + 1 : hi + 1] - v[lo:hi]
    j = lo + int(gaps.argmax())
    return float((v[j] + v[j + 1]) / 2)


def build(case: Case, seed: int = 0) -> tuple[torch.Tensor, SparseFFNWeights, dict]:
    """x, weights and the sparse_ffn keyword arguments for a case (fp32, CPU)."""
    g = torch.Generator().manual_seed(seed)
    d, f = case.dim, case.ffn_dim
    first = torch.randn((2 if case.gated else 1) * f, d, generator=g) / d**0.5
    weights = SparseFFNWeights.from_dense(first, torch.randn(d, f, generator=g) / f**0.5, case.gated)
    x = torch.randn(case.batch, d, generator=g)
    act_gate = ACTIVATIONS[case.activation](x @ weights.gate.T)
    kwargs: dict = {"activation": case.activation}
    if case.mode in ("thr", "both", "thr_vec"):
        t = gap_threshold(act_gate, case.sparsity if case.mode != "both" else 0.3)
        if case.mode == "thr_vec":  # every third neuron switched off by a huge threshold
            vec = torch.full((f,), t)
            vec[::3] = 1e9
            kwargs["thresholds"] = vec
        else:
            kwargs["thresholds"] = t
    if case.mode in ("idx", "both"):
        n_active = round(f * (1 - case.sparsity))
        kwargs["active_idx"] = torch.randperm(f, generator=g)[:n_active]  # unsorted on purpose
    return x, weights, kwargs


def interpret_cases() -> list[Case]:
    """The Triton interpreter matrix: kept small, every case runs in ~0.1-0.3 s."""
    cases = []
    for gated in (True, False):
        for act in ("relu", "relu2", "silu"):
            for batch in (1, 4):
                for s in (0.0, 0.5, 0.9, 1.0):
                    cases.append(Case(gated, act, batch, "thr", s))
                cases += [Case(gated, act, batch, "idx", 0.8), Case(gated, act, batch, "both", 0.5)]
    cases += [
        Case(True, "gelu", 1, "thr", 0.5),
        Case(True, "gelu_tanh", 4, "thr", 0.5),
        Case(True, "relu", 4, "idx", 1.0),  # empty predicted set
        Case(True, "relu", 4, "idx", 0.0),  # every neuron predicted
        Case(False, "relu2", 2, "thr_vec", 0.5),
        Case(True, "silu", 4, "thr", 0.5, dim=128, ffn_dim=256),
        Case(True, "relu", 4, "thr", 0.5, split_k=1),
        Case(False, "silu", 1, "idx", 0.5, split_k=1),
        Case(True, "relu2", 3, "thr", 0.9, dim=96, ffn_dim=130, split_k=3),
    ]
    return cases
