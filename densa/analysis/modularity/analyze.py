"""One model's modularity: specialisation per layer and family, functional experts, perturbation.

`analyze_modularity(model, probes, settings)` returns a JSON-ready dict (see `report.py` for the
markdown and heat maps written from it).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from torch import nn

from densa.analysis.errors import AnalysisError
from densa.analysis.modularity.activations import collect_activations, ffn_modules
from densa.analysis.modularity.experts import (
    PARTITIONS,
    check_experts,
    concentration,
    expert_ranking,
    layer_partitions,
    top_neurons,
)
from densa.analysis.modularity.perturbation import eval_subset, perturbation
from densa.analysis.modularity.specialisation import layer_specialisation
from densa.analysis.probes import Probes


@dataclass(frozen=True)
class Settings:
    experts: int = 16
    top_fraction: float = 0.01
    """Top neurons per label counted per expert (the paper: 1%)."""
    alpha: float = 0.001
    """Hypergeometric test level for a functional expert (the paper: 0.001)."""
    quantile: float = 0.99
    """Specialised: predictivity above this quantile of the shuffled-label predictivities."""
    baseline_shuffles: int = 2
    random_partitions: int = 5
    perturb: bool = True
    perturb_per_label: int = 25
    """Sequences with a positive example per label in the perturbation set."""
    perturb_random: int = 3
    """Random-expert ablations (seeds) per family."""
    partition_seeds: int = 1
    """Parameter clusterings (k-means seeds) per layer: functional experts and the perturbation are found
    and measured in each (`perturbation.by_partition_seed`; the top-level fields are seed 0's)."""
    batch_size: int = 16
    seed: int = 0
    families: tuple[str, ...] | None = None
    """Analyse only these probe families (None: all). The co-activation partition still clusters the
    linguistic family's activations, so a subset run finds the same partitions as a full one."""


def _mean_sd(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0}


def analyze_modularity(
    model: nn.Module, probes: Probes, settings: Settings = Settings(), log: Callable[[str], None] = print
) -> dict:
    ffns = ffn_modules(model)
    ffn_dim = ffns[0].down_proj.weight.shape[1]
    check_experts(ffn_dim, settings.experts)
    t0 = time.perf_counter()
    chosen_families = probes.families if settings.families is None else list(settings.families)
    unknown = sorted(set(chosen_families) - set(probes.families))
    if unknown:
        raise AnalysisError(f"families {unknown} are not in the probes (they have {probes.families})")
    pattern_family = "linguistic" if "linguistic" in probes.families else chosen_families[0]
    acts = {}
    for family in dict.fromkeys([*chosen_families, pattern_family]):
        acts[family] = collect_activations(model, probes.family(family), batch_size=settings.batch_size)
        n = acts[family].labels.numel()
        log(f"activations: {family}, {n} examples ({time.perf_counter() - t0:.0f} s)")
    patterns = acts[pattern_family]
    acts = {f: acts[f] for f in chosen_families}
    spec: dict[str, list] = {f: [] for f in acts}
    for layer in range(len(ffns)):
        for f, fa in acts.items():
            spec[f].append(
                layer_specialisation(
                    fa.acts[layer],
                    fa.labels,
                    len(probes.labels(f)),
                    quantile=settings.quantile,
                    baseline_shuffles=settings.baseline_shuffles,
                    seed=settings.seed,
                )
            )
    log(f"specialisation done ({time.perf_counter() - t0:.0f} s)")
    parts = [
        layer_partitions(
            ffns[layer],
            patterns.acts[layer],
            settings.experts,
            random_seeds=settings.random_partitions,
            seed=settings.seed,
            param_seeds=settings.partition_seeds,
        )
        for layer in range(len(ffns))
    ]
    log(f"partitions done ({time.perf_counter() - t0:.0f} s)")
    result: dict = {"settings": asdict(settings), "layers": len(ffns), "ffn_dim": ffn_dim, "families": {}}
    for f in acts:
        names = probes.labels(f)
        fam: dict = {"labels": names, "examples": int(acts[f].labels.numel())}
        fam["specialisation"] = {
            "fraction": [s.fraction for s in spec[f]],
            "baseline": [_mean_sd(s.baseline) for s in spec[f]],
            "per_label": [s.per_label for s in spec[f]],
            "baseline_per_label": [s.baseline_per_label for s in spec[f]],
            "mean_predictivity": [s.predictivity.nanmean(1).tolist() for s in spec[f]],
        }
        concs = {p: [] for p in PARTITIONS}
        for layer in range(len(ffns)):
            top = top_neurons(spec[f][layer].predictivity, settings.top_fraction)
            for p in PARTITIONS:
                concs[p].append(
                    [concentration(top, lab, settings.experts, settings.alpha) for lab in parts[layer][p]]
                )
        fam["experts"] = {}
        for p in PARTITIONS:
            per_seed = list(zip(*concs[p]))  # seed -> layers
            fam["experts"][p] = {
                "functional_fraction": _mean_sd(
                    [statistics.fmean(c.functional_fraction for c in seed) for seed in per_seed]
                ),
                "expert_fraction": _mean_sd(
                    [statistics.fmean(c.expert_fraction for c in seed) for seed in per_seed]
                ),
                "per_layer_functional_fraction": [
                    statistics.fmean(c.functional_fraction for c in layer) for layer in concs[p]
                ],
                "per_label_functional_fraction": [
                    statistics.fmean(float(c.functional[j].float().mean()) for seed in per_seed for c in seed)
                    for j in range(len(names))
                ],
                "extent": [c.extent for c in per_seed[0]],
            }
        if settings.perturb:
            subset = eval_subset(probes.family(f), len(names), settings.perturb_per_label, settings.seed)
            runs = []
            for s in range(settings.partition_seeds):
                chosen = [
                    [expert_ranking(concs["param"][layer][s], j)[0] for layer in range(len(ffns))]
                    for j in range(len(names))
                ]
                res = perturbation(
                    model,
                    subset,
                    names,
                    [parts[layer]["param"][s] for layer in range(len(ffns))],
                    chosen,
                    random_seeds=settings.perturb_random,
                    seed=settings.seed,
                    batch_size=settings.batch_size,
                )
                runs.append(
                    {
                        "functional_experts": chosen,
                        "delta": res.delta,
                        "random_delta": res.random_delta,
                        "per_label": res.summary(),
                    }
                )
            fam["perturbation"] = {
                "partition": "param",
                "sequences": len(subset),
                **{k: runs[0][k] for k in ("delta", "random_delta", "per_label")},
                "by_partition_seed": runs,
            }
            log(f"perturbation: {f} done ({time.perf_counter() - t0:.0f} s)")
        result["families"][f] = fam
    result["seconds"] = time.perf_counter() - t0
    return result
