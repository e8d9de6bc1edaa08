"""Emergence over pretraining: does the expert partition stabilise before single neurons' functions do?

At every checkpoint, per layer: the MoEfication partitions (parameter clustering, two seeds: their
agreement is the clustering's own noise; co-activation clustering) and every neuron's predictivity for
every probe label. Between each checkpoint and the final one (and the next one):

- partition stability: adjusted Rand index and assignment overlap (`densa.sparse_moe.stability`);
- neuron stability: Spearman correlation of the neurons' predictivity for each label, averaged over labels
  (the paper's measure), and the ARI of the grouping of neurons by their best function (chance-corrected
  like the partition's);
- expert-level function stability: the same Spearman on experts' mean predictivity, both checkpoints
  grouped by the later checkpoint's partition (the paper's expert-level curve), and, as its control, grouped
  by a fixed random partition (averaging alone makes expert-level curves smoother and earlier).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable

import torch
from torch import nn

from densa.analysis.errors import AnalysisError
from densa.analysis.modularity.activations import collect_activations, ffn_modules
from densa.analysis.modularity.experts import check_experts, coactivation_points
from densa.analysis.modularity.specialisation import Ranking, label_predictivity
from densa.analysis.probes import Probes
from densa.sparse_moe import adjusted_rand_index, assignment_overlap, split_neurons
from densa.sparse_moe.moefication import neuron_rows

MIN_CHECKPOINTS = 3


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of two equally long vectors (ties broken by position)."""

    def ranks(x: torch.Tensor) -> torch.Tensor:
        r = torch.empty(x.numel(), dtype=torch.float64)
        r[x.flatten().argsort(stable=True)] = torch.arange(x.numel(), dtype=torch.float64)
        return r - r.mean()

    ra, rb = ranks(a.nan_to_num(0.0)), ranks(b.nan_to_num(0.0))
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def snapshot(
    model: nn.Module, probes: Probes, num_experts: int, seed: int = 0, clustering_noise: bool = True
) -> dict[str, list[torch.Tensor]]:
    """Per layer: partitions (param seeds 0/1, coact), predictivity [labels, ffn], best-function labels.

    clustering_noise=False skips the second parameter clustering (a third of the k-means time)."""
    ffns = ffn_modules(model)
    check_experts(ffns[0].down_proj.weight.shape[1], num_experts)
    acts = {f: collect_activations(model, probes.family(f)) for f in probes.families}
    keys = ("param", "param_seed1", "coact", "random", "pred", "best")
    out: dict[str, list[torch.Tensor]] = {k: [] for k in keys}
    patterns = acts["linguistic" if "linguistic" in acts else probes.families[0]]
    for layer, ffn in enumerate(ffns):
        rows = neuron_rows(ffn).detach().float()
        out["param"].append(split_neurons(rows, num_experts, seed=seed).labels)
        if clustering_noise:
            out["param_seed1"].append(split_neurons(rows, num_experts, seed=seed + 1).labels)
        # the same seeded random split at every checkpoint: expert-level averaging without any structure
        out["random"].append(split_neurons(rows, num_experts, method="random", seed=seed).labels)
        out["coact"].append(
            split_neurons(coactivation_points(patterns.acts[layer], seed), num_experts, seed=seed).labels
        )
        preds, lifts = [], []
        for f, fa in acts.items():
            n = len(probes.labels(f))
            p = label_predictivity(Ranking(fa.acts[layer]), fa.labels, n)
            prevalence = torch.stack([(fa.labels == j).float().mean() for j in range(n)])
            preds.append(p)
            lifts.append(p / prevalence[:, None])  # AP of a random score ≈ prevalence
        out["pred"].append(torch.cat(preds))
        out["best"].append(torch.cat(lifts).nan_to_num(0.0).argmax(0))
    return out


def _per_label_spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over labels (rows) of the Spearman correlation across neurons (columns)."""
    return statistics.fmean(spearman(x, y) for x, y in zip(a, b, strict=True))


def _expert_mean(pred: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[num_labels, E] mean predictivity of each expert's neurons."""
    e = int(labels.max()) + 1
    sums = torch.zeros(pred.shape[0], e, dtype=pred.dtype).index_add_(1, labels, pred.nan_to_num(0.0))
    return sums / torch.bincount(labels, minlength=e)


def _compare(a: dict, b: dict) -> dict[str, float]:
    """Similarities of snapshot `a` to the later one `b`; expert-level predictivity uses b's partition."""
    layers = range(len(a["param"]))

    def mean(fn: Callable[[int], float]) -> float:
        return statistics.fmean(fn(i) for i in layers)

    return {
        "param_ari": mean(lambda i: adjusted_rand_index(a["param"][i], b["param"][i])),
        "param_overlap": mean(lambda i: assignment_overlap(a["param"][i], b["param"][i])),
        "coact_ari": mean(lambda i: adjusted_rand_index(a["coact"][i], b["coact"][i])),
        "neuron_spearman": mean(lambda i: _per_label_spearman(a["pred"][i], b["pred"][i])),
        "expert_spearman": mean(
            lambda i: _per_label_spearman(
                _expert_mean(a["pred"][i], b["param"][i]), _expert_mean(b["pred"][i], b["param"][i])
            )
        ),
        "random_expert_spearman": mean(
            lambda i: _per_label_spearman(
                _expert_mean(a["pred"][i], b["random"][i]), _expert_mean(b["pred"][i], b["random"][i])
            )
        ),
        "best_function_ari": mean(lambda i: adjusted_rand_index(a["best"][i], b["best"][i])),
    }


def emergence(
    models: Iterable[tuple[int, nn.Module]],
    probes: Probes,
    num_experts: int,
    *,
    seed: int = 0,
    clustering_noise: bool = True,
    log: Callable[[str], None] = print,
) -> dict:
    """Stability curves over (step, model) pairs in training order; JSON-ready.

    clustering_noise: also cluster with seed + 1 at every checkpoint and report the two clusterings' ARI
    (`param_seed_ari`, the clustering's own noise; an empty list when False)."""
    t0 = time.perf_counter()
    steps, snaps = [], []
    for step, model in models:
        snaps.append(snapshot(model, probes, num_experts, seed, clustering_noise))
        steps.append(step)
        log(f"step {step}: snapshot ({time.perf_counter() - t0:.0f} s)")
    result = compare_snapshots(steps, snaps, num_experts)
    result["seconds"] = time.perf_counter() - t0
    return result


def compare_snapshots(steps: list[int], snaps: list[dict], num_experts: int) -> dict:
    """`emergence`'s curves from snapshots already taken (`snapshot`, one per step in training order): a
    caller may take and cache them as checkpoints appear, while training still runs."""
    if len(snaps) < MIN_CHECKPOINTS:
        raise AnalysisError(
            f"emergence needs at least {MIN_CHECKPOINTS} checkpoints, found {len(snaps)}: train with a "
            "smaller checkpoint.interval and a larger checkpoint.keep_last"
        )
    final = snaps[-1]
    return {
        "steps": list(steps),
        "experts": num_experts,
        "to_final": [_compare(s, final) for s in snaps[:-1]],
        "to_next": [_compare(a, b) for a, b in zip(snaps[:-1], snaps[1:])],
        "param_seed_ari": [
            statistics.fmean(adjusted_rand_index(a, b) for a, b in zip(s["param"], s["param_seed1"]))
            for s in snaps
            if s["param_seed1"]
        ],
    }
