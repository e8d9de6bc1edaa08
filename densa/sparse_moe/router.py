"""Routers that score experts for each token, and MoEfication's router training.

- `CentroidRouter` (SSD): s_e = x · g_e with g_e the unit centroid of expert e's normalised neuron rows,
  scaled to the mean neuron-row norm, so a score reads like the pre-activation of an "average neuron" of
  the expert. No training is needed before use; in sparse training it learns through the
  straight-through combine weight.
- `MLPRouter` (MoEfication): Linear(d→E) → tanh → Linear(E→E) on the L2-normalised hidden state,
  initialised to (unit centroids, identity) and trained with BCE-with-logits against each expert's
  activation mass normalised by its batch maximum (`train_router`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from densa.sparse_moe.config import ROUTERS  # one definition (config.py), re-exported
from densa.sparse_moe.moefication import Clustering


class CentroidRouter(nn.Module):
    def __init__(self, dim: int, num_experts: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(num_experts, dim))

    @classmethod
    def from_clustering(cls, clustering: Clustering) -> CentroidRouter:
        c = clustering.centroids
        router = cls(c.shape[1], c.shape[0])
        with torch.no_grad():
            router.weight.copy_(F.normalize(c, dim=1) * clustering.row_norm)
        return router

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight.to(x.dtype))


class MLPRouter(nn.Module):
    def __init__(self, dim: int, num_experts: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, num_experts, bias=False)
        self.mix = nn.Linear(num_experts, num_experts, bias=False)

    @classmethod
    def from_clustering(cls, clustering: Clustering) -> MLPRouter:
        c = clustering.centroids
        router = cls(c.shape[1], c.shape[0])
        with torch.no_grad():
            router.proj.weight.copy_(F.normalize(c, dim=1))
            router.mix.weight.copy_(torch.eye(c.shape[0]))
        return router

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(x, dim=-1)
        return self.mix(torch.tanh(self.proj(x.to(self.proj.weight.dtype)))).to(x.dtype)


def build_router(kind: str, clustering: Clustering) -> nn.Module:
    if kind == "centroid":
        return CentroidRouter.from_clustering(clustering)
    if kind == "mlp":
        return MLPRouter.from_clustering(clustering)
    from densa.sparse_moe.errors import MoEError

    raise MoEError(f"unknown router {kind!r}; choose from {ROUTERS}")


@torch.no_grad()
def expert_activation_mass(ffn: nn.Module, x: torch.Tensor, num_experts: int) -> torch.Tensor:
    """[N, E] Σ |activation| over each expert's neurons (contiguous blocks of the FFN's current order).

    `ffn` is a FeedForward or MoEFeedForward (its dense weights are used); x is [..., dim]. For ReLU FFNs
    this is MoEfication's positive activation mass; for gated FFNs it is the magnitude that feeds down_proj.
    """
    flat = x.reshape(-1, x.shape[-1])
    if ffn.gated:
        gate, up = F.linear(flat, ffn.gate_up_proj.weight).chunk(2, dim=-1)
        hidden = ffn.act_fn(gate) * up
    else:
        hidden = ffn.act_fn(F.linear(flat, ffn.up_proj.weight))
    return hidden.abs().reshape(flat.shape[0], num_experts, -1).sum(-1)


def routing_coverage(scores: torch.Tensor, mass: torch.Tensor, top_k: int) -> float:
    """Share of the true activation mass held by the router's top-k experts (1.0 = oracle routing)."""
    picked = mass.gather(1, scores.topk(top_k, dim=1).indices).sum()
    return float(picked / mass.sum().clamp_min(1e-12))


def train_router(
    router: nn.Module,
    inputs: torch.Tensor,
    mass: torch.Tensor,
    *,
    top_k: int,
    epochs: int = 30,
    lr: float = 1e-2,
    batch_size: int = 512,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> dict[str, float]:
    """Fit `router` to activation mass with BCE-with-logits (MoEfication's MLP router recipe).

    inputs [N, dim] FFN inputs; mass [N, E] from `expert_activation_mass`. Targets are each expert's mass
    divided by its maximum over the batch. The state with the best validation coverage at `top_k` is kept.
    Returns {"coverage_before", "coverage", "loss"} on the validation split.
    """
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(inputs.shape[0], generator=gen).to(inputs.device)
    n_val = max(1, int(inputs.shape[0] * val_fraction))
    val, train = order[:n_val], order[n_val:]
    target = mass / mass.amax(0, keepdim=True).clamp_min(1e-12)
    opt = torch.optim.Adam(router.parameters(), lr=lr)

    def evaluate() -> tuple[float, float]:
        with torch.no_grad():
            logits = router(inputs[val])
            loss = F.binary_cross_entropy_with_logits(logits.float(), target[val].float())
            return routing_coverage(logits, mass[val], top_k), float(loss)

    before, _ = evaluate()
    best = (before, {k: v.clone() for k, v in router.state_dict().items()})
    for _ in range(epochs):
        perm = train[torch.randperm(train.numel(), generator=gen).to(inputs.device)]
        for start in range(0, perm.numel(), batch_size):
            idx = perm[start : start + batch_size]
            loss = F.binary_cross_entropy_with_logits(router(inputs[idx]).float(), target[idx].float())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        coverage, _ = evaluate()
        if coverage > best[0]:
            best = (coverage, {k: v.clone() for k, v in router.state_dict().items()})
    router.load_state_dict(best[1])
    coverage, loss = evaluate()
    return {"coverage_before": before, "coverage": coverage, "loss": loss}
