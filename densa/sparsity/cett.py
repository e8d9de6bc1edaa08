"""CETT (cumulative errors of tail truncation) and the per-layer threshold search (Sparsing Law, §4).

Neuron i's output is a_i·W_down[:, i], of magnitude n_i = |a_i|·‖W_down[:, i]‖. For a layer threshold t,
D(t) = {i : n_i ≤ t} and CETT(t) = mean over tokens of ‖W_down a_D(t)‖ / ‖W_down a‖.
"""

from __future__ import annotations

import torch

# Matmul chunk: tokens per block so one [chunk, ffn_dim] masked copy stays around 64 MB.
_CHUNK_ELEMS = 16 * 2**20


def neuron_outputs(acts: torch.Tensor, down_norms: torch.Tensor) -> torch.Tensor:
    """n = |a| · ‖W_down[:, i]‖, [..., ffn_dim]."""
    return acts.abs() * down_norms.to(acts)


def _chunks(n_tokens: int, ffn_dim: int) -> range:
    return range(0, n_tokens, max(1, _CHUNK_ELEMS // max(ffn_dim, 1)))


def cett(acts: torch.Tensor, down_weight: torch.Tensor, threshold: float) -> float:
    """CETT of one layer at one threshold; acts [n, ffn_dim], down_weight [dim, ffn_dim]."""
    return LayerCETT(acts, down_weight).cett(threshold)


class LayerCETT:
    """One layer's cached activations, with CETT(t) evaluated in token chunks and memoised by t.

    The outer PPL-p% bisection asks for many nearby targets; its inner binary searches revisit the same
    candidate thresholds, so memoising CETT(t) removes most of the matmuls.
    """

    def __init__(self, acts: torch.Tensor, down_weight: torch.Tensor) -> None:
        self.acts = acts.float()
        self.weight = down_weight.detach().float().to(self.acts.device)
        self.norms = self.weight.norm(dim=0)
        self.outputs = neuron_outputs(self.acts, self.norms)
        dense = torch.cat([self._out_norm(self.acts[s : s + self._step]) for s in self._ranges()])
        # Tokens whose FFN output is exactly zero have nothing to truncate: their ratio counts as 0.
        self._inv_dense = torch.where(dense > 0, 1.0 / dense.clamp_min(1e-30), torch.zeros_like(dense))
        self._memo: dict[float, float] = {}
        self._default_candidates: torch.Tensor | None = None

    @property
    def _step(self) -> int:
        return _chunks(self.acts.shape[0], self.acts.shape[1]).step

    def _ranges(self) -> range:
        return _chunks(self.acts.shape[0], self.acts.shape[1])

    def _out_norm(self, a: torch.Tensor) -> torch.Tensor:
        return (a @ self.weight.T).norm(dim=-1)

    def cett(self, threshold: float) -> float:
        t = float(threshold)
        if t not in self._memo:
            total = 0.0
            for s in self._ranges():
                a, n = self.acts[s : s + self._step], self.outputs[s : s + self._step]
                tail = self._out_norm(torch.where(n <= t, a, torch.zeros_like(a)))
                total += float((tail * self._inv_dense[s : s + self._step]).sum())
            self._memo[t] = total / max(self.acts.shape[0], 1)
        return self._memo[t]

    def candidates(
        self, num: int = 65536, quantile: float = 0.99, sample: int = 2**20, seed: int = 0
    ) -> torch.Tensor:
        """`num` thresholds linearly spaced from min(n) to the `quantile` of a subsample of n."""
        flat = self.outputs.reshape(-1)
        if flat.numel() > sample:
            gen = torch.Generator().manual_seed(seed)
            flat = flat[torch.randint(flat.numel(), (sample,), generator=gen)]
        hi = torch.quantile(flat.double(), quantile).item()
        return torch.linspace(float(self.outputs.min()), hi, num, dtype=torch.float64)

    def search(self, target: float, candidates: torch.Tensor | None = None) -> tuple[float, float]:
        """(t, CETT(t)) for the largest candidate t with CETT(t) ≤ target, by binary search.

        When no candidate qualifies, t = 0: it zeroes only exact zeros, which changes nothing.
        """
        if candidates is None:
            if self._default_candidates is None:
                self._default_candidates = self.candidates()
            candidates = self._default_candidates
        cands = candidates
        lo, hi = (
            -1,
            len(cands),
        )  # invariant: cands[lo] qualifies (lo = -1: "prune nothing"), cands[hi] does not
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self.cett(float(cands[mid])) <= target:
                lo = mid
            else:
                hi = mid
        if lo < 0:
            return 0.0, self.cett(0.0)
        t = float(cands[lo])
        return t, self.cett(t)

    def sparsity(self, threshold: float) -> float:
        """Fraction of (token, neuron) pairs with n_i ≤ t on the cached tokens."""
        return float((self.outputs <= threshold).float().mean())


def search_threshold(
    acts: torch.Tensor, down_weight: torch.Tensor, target: float, num_candidates: int = 65536
) -> tuple[float, float]:
    """(t, CETT(t)): the layer threshold on n reaching CETT ≤ target as closely as the grid allows."""
    layer = LayerCETT(acts, down_weight)
    return layer.search(target, layer.candidates(num_candidates))
