"""Perturbation: deactivate a function's experts and measure the loss on that function and on the others.

For label j the functional expert set is, in every layer, the expert that concentrates j's top neurons
most (lowest hypergeometric p); all of them are zeroed at once (`deactivated`). Controls of the same
size: one random expert per layer (seeded, shared by the family's labels) and the other labels'
functional expert sets. The measure is the increase of the next-token loss at the label's examples
(`example_losses`): for a token example the prediction made at that token, for a sequence example the
sequence's mean loss. The paper perturbs activations with noise on downstream tasks; zeroing keeps the
measure exact (a deactivated neuron contributes nothing) and the test direct.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from torch import nn

from densa.analysis.modularity.activations import deactivated, example_losses
from densa.analysis.probes import ProbeSequence


def eval_subset(seqs: list[ProbeSequence], num_labels: int, per_label: int, seed: int) -> list[ProbeSequence]:
    """Up to `per_label` sequences with a positive example for each label (seeded), in original order."""
    rng = random.Random(seed)
    chosen: set[int] = set()
    for j in range(num_labels):
        having = [i for i, s in enumerate(seqs) if any(label == j for _p, label in s.examples)]
        chosen.update(rng.sample(having, min(per_label, len(having))))
    return [seqs[i] for i in sorted(chosen)]


def expert_neurons(partitions: list[torch.Tensor], experts: list[int]) -> dict[int, torch.Tensor]:
    """{layer: neuron indices of the chosen expert} from per-layer partition labels."""
    return {
        layer: (labels == e).nonzero().flatten() for layer, (labels, e) in enumerate(zip(partitions, experts))
    }


@dataclass(frozen=True)
class PerturbationResult:
    labels: list[str]
    delta: list[list[float]]
    """[ablated label g][measured label j]: mean loss increase at j's examples with g's experts off."""
    random_delta: list[list[float]]
    """[random seed][measured label j]: the same with one random expert per layer off."""
    base_loss: list[float]
    """[measured label j] mean loss with nothing off."""
    examples: list[int]
    """[label j] examples measured."""

    def summary(self) -> list[dict]:
        out = []
        for j, name in enumerate(self.labels):
            own = self.delta[j][j]
            rand = torch.tensor([r[j] for r in self.random_delta], dtype=torch.float64)
            others = [self.delta[g][j] for g in range(len(self.labels)) if g != j]
            out.append(
                {
                    "label": name,
                    "examples": self.examples[j],
                    "base_loss": self.base_loss[j],
                    "functional_delta": own,
                    "random_delta_mean": float(rand.mean()),
                    "random_delta_sd": float(rand.std()) if rand.numel() > 1 else 0.0,
                    "random_delta_max": float(rand.max()),
                    "other_functional_delta_mean": sum(others) / len(others) if others else float("nan"),
                    "beats_every_random": bool(own > float(rand.max())),
                    "beats_every_other_functional": bool(all(own > o for o in others)),
                }
            )
        return out


def perturbation(
    model: nn.Module,
    seqs: list[ProbeSequence],
    label_names: list[str],
    partitions: list[torch.Tensor],
    functional: list[list[int]],
    *,
    random_seeds: int = 3,
    seed: int = 0,
    batch_size: int = 16,
) -> PerturbationResult:
    """Loss increases per label for each label's functional experts and for random experts.

    partitions: per layer [ffn_dim] expert labels; functional[j][layer]: label j's expert in that layer.
    """
    num_experts = int(partitions[0].max()) + 1
    labels = torch.tensor([label for s in seqs for _p, label in s.examples])
    base = example_losses(model, seqs, batch_size=batch_size)

    def deltas(experts: list[int]) -> list[float]:
        with deactivated(model, expert_neurons(partitions, experts)):
            diff = example_losses(model, seqs, batch_size=batch_size) - base
        return [float(diff[(labels == j) & diff.isfinite()].mean()) for j in range(len(label_names))]

    gen = random.Random(seed)
    rand = [deltas([gen.randrange(num_experts) for _ in partitions]) for _ in range(random_seeds)]
    return PerturbationResult(
        labels=list(label_names),
        delta=[deltas(functional[j]) for j in range(len(label_names))],
        random_delta=rand,
        base_loss=[float(base[(labels == j) & base.isfinite()].mean()) for j in range(len(label_names))],
        examples=[int(((labels == j) & base.isfinite()).sum()) for j in range(len(label_names))],
    )
