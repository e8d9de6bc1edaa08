"""TransE knowledge-graph embeddings (Bordes et al., 2013) in plain torch: h + r ≈ t.

Score of a triple = -‖e_h + r - e_t‖₁; training minimises the margin ranking loss
max(0, γ + d(true) - d(corrupted)) with one corrupted triple per true one (head or tail replaced by a
uniformly drawn entity) and renormalises entity vectors to unit L2 norm before each batch, as the paper.
Why not pykeen or torchkge: see docs/plugins.md (the short version: this is ~60 lines and pulls in nothing).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from densa.plugins.kb import KnowledgeBase


@dataclass(frozen=True)
class TransEConfig:
    dim: int = 64
    margin: float = 1.0
    lr: float = 0.01
    epochs: int = 200
    batch_size: int = 512
    seed: int = 0


class TransE(nn.Module):
    def __init__(self, n_entities: int, n_relations: int, dim: int) -> None:
        super().__init__()
        bound = 6 / dim**0.5  # the paper's uniform init
        self.entity = nn.Parameter(torch.empty(n_entities, dim).uniform_(-bound, bound))
        self.relation = nn.Parameter(torch.empty(n_relations, dim).uniform_(-bound, bound))
        with torch.no_grad():
            self.relation /= self.relation.norm(dim=1, keepdim=True)

    def distance(self, h: torch.Tensor, r: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """‖e_h + r - e_t‖₁ per triple (lower = more plausible)."""
        return (self.entity[h] + self.relation[r] - self.entity[t]).abs().sum(-1)


def corrupt(triples: torch.Tensor, n_entities: int, gen: torch.Generator) -> torch.Tensor:
    """Each triple with its head or tail (fair coin) replaced by a uniformly drawn entity."""
    out = triples.clone()
    side = torch.randint(0, 2, (len(triples),), generator=gen) * 2  # column 0 (head) or 2 (tail)
    out[torch.arange(len(triples)), side] = torch.randint(0, n_entities, (len(triples),), generator=gen)
    return out


def train_transe(kb: KnowledgeBase, cfg: TransEConfig = TransEConfig()) -> TransE:
    """TransE trained on `kb` (entity rows of unit L2 norm), deterministic for cfg.seed; the entity
    embeddings a mapper reads are `.entity.detach()`."""
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    model = TransE(len(kb.entities), len(kb.relations), cfg.dim)
    triples = torch.tensor(kb.triples, dtype=torch.long)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    for _ in range(cfg.epochs):
        for batch in triples[torch.randperm(len(triples), generator=gen)].split(cfg.batch_size):
            with torch.no_grad():
                model.entity /= model.entity.norm(dim=1, keepdim=True)
            neg = corrupt(batch, len(kb.entities), gen)
            pos_d = model.distance(*batch.T)
            neg_d = model.distance(*neg.T)
            loss = torch.relu(cfg.margin + pos_d - neg_d).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        model.entity /= model.entity.norm(dim=1, keepdim=True)
    return model.requires_grad_(False)


def tail_ranks(entity: torch.Tensor, relation: torch.Tensor, triples: torch.Tensor) -> torch.Tensor:
    """Rank (1 = best) of each true tail among all entities by ‖e_h + r - e‖₁ (raw, unfiltered)."""
    d = (entity[triples[:, 0]] + relation[triples[:, 1]])[:, None, :] - entity[None]
    dist = d.abs().sum(-1)
    true = dist.gather(1, triples[:, 2:3])
    return (dist < true).sum(1) + 1
