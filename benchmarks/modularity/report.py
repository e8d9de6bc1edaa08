"""benchmarks/results/modularity.{json,md,png} from the raw stage files of benchmarks/modularity/run.py."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from benchmarks.common import RESULTS_DIR, machine_info, write_results
from benchmarks.modularity.losses import loss_markdown, loss_summary, val_curve

NAME = "modularity"
MARGIN_SD = 3.0
"""A finding holds when the real value exceeds the control's mean by this many control SDs (and its max)."""
STABLE_FRACTION = 0.8
"""A curve has stabilised once it stays at ≥ this share of its rise (similarity to the final model)."""
KEYS = (
    "param_ari",
    "param_overlap",
    "coact_ari",
    "neuron_spearman",
    "expert_spearman",
    "random_expert_spearman",
    "best_function_ari",
)
LEAD = 2
"""Checkpoints by which one curve must stabilise before another (the emergence finding; one run)."""


def specialisation_rows(res: dict) -> list[dict]:
    rows = []
    for f, fam in res["families"].items():
        spec = fam["specialisation"]
        real = statistics.fmean(spec["fraction"])
        base = [b["mean"] for b in spec["baseline"]]
        base_sd = statistics.fmean(b["sd"] for b in spec["baseline"])
        per_label = statistics.fmean(statistics.fmean(x) for x in spec["per_label"])
        per_label_base = statistics.fmean(statistics.fmean(x) for x in spec["baseline_per_label"])
        # the spread of the baseline over every layer and shuffle: 2 shuffles per layer alone give a poor SD
        pooled = statistics.stdev([b["mean"] + d for b in spec["baseline"] for d in (-b["sd"], b["sd"])])
        layers_above = sum(
            fr > b["mean"] + MARGIN_SD * pooled for fr, b in zip(spec["fraction"], spec["baseline"])
        )
        rows.append(
            {
                "family": f,
                "specialised_fraction": real,
                "baseline_fraction": statistics.fmean(base),
                "baseline_sd": base_sd,
                "baseline_pooled_sd": pooled,
                "per_label_fraction": per_label,
                "per_label_baseline": per_label_base,
                "layers_above_baseline": layers_above,
                "layers": len(spec["fraction"]),
                "holds": real > statistics.fmean(base) + MARGIN_SD * pooled,
            }
        )
    return rows


def expert_rows(res: dict) -> list[dict]:
    rows = []
    for f, fam in res["families"].items():
        ex = fam["experts"]
        rand = ex["random"]["functional_fraction"]
        row = {"family": f, "random_mean": rand["mean"], "random_sd": rand["sd"]}
        for p in ("param", "coact"):
            row[p] = ex[p]["functional_fraction"]["mean"]
            row[f"{p}_holds"] = row[p] > rand["mean"] + MARGIN_SD * max(rand["sd"], 1e-4)
            row[f"{p}_extent"] = (
                statistics.fmean(x for x in ex[p]["extent"] if x == x)
                if any(x == x for x in ex[p]["extent"])
                else float("nan")
            )
        rows.append(row)
    return rows


def perturbation_rows(res: dict) -> list[dict]:
    rows = []
    for f, fam in res["families"].items():
        for r in fam.get("perturbation", {}).get("per_label", []):
            rows.append({"family": f, **r})
    return rows


def stabilisation(em: dict) -> dict[str, int | None]:
    """First step after which each similarity-to-final curve stays ≥ STABLE_FRACTION of its rise.

    Progress p(t) = (s(t) − s(first)) / (s(last) − s(first)) makes curves of different scales (ARI,
    Spearman) comparable: a curve that rises early and then plateaus stabilises early.
    """
    steps = em["steps"][:-1]
    out = {}
    for key in KEYS:
        curve = [r[key] for r in em["to_final"]]
        rise = curve[-1] - curve[0]
        progress = [(c - curve[0]) / rise if rise > 0 else 1.0 for c in curve]
        out[key] = next(
            (steps[i] for i in range(len(curve)) if all(p >= STABLE_FRACTION for p in progress[i:])), None
        )
    return out


def _f(x: float | None) -> str:
    return "–" if x is None else f"{x:.0f}"


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def markdown(res: dict, em: dict | None, payload: dict) -> str:
    s = res["settings"]
    out = [
        "# Emergent Modularity at small scale",
        "",
        f"**SmolLM2-135M-Instruct** ({res['layers']} layers × {res['ffn_dim']} SwiGLU neurons, fp32) on "
        f"probes built for its tokenizer: linguistic {res['probes']['tokens']['linguistic']} tokens "
        f"({len(res['probes']['labels']['linguistic'])} POS labels), knowledge "
        f"{res['probes']['sequences']['knowledge']}"
        f" fact sentences ({len(res['probes']['labels']['knowledge'])} relations), semantic "
        f"{res['probes']['sequences']['semantic']} documents (3 genres). {s['experts']} experts per layer; "
        f"top {100 * s['top_fraction']:g}% neurons per label; functional at hypergeometric "
        f"p ≤ {s['alpha']:g}; "
        f"specialised = predictivity above the {100 * s['quantile']:g}th percentile of shuffled-label "
        f"predictivity. A finding holds when it beats its control by more than {MARGIN_SD:g} control SDs. "
        "`python benchmarks/modularity/run.py` (1 thread).",
        "",
        "## Findings",
        "",
        "| finding (paper) | here | holds |",
        "| --- | --- | --- |",
    ]
    for name, text, holds in payload["findings"]:
        out.append(f"| {name} | {text} | {'yes' if holds else '**no**'} |")
    out += [
        "",
        "## 1. Neuron specialisation (mean over layers)",
        "",
        "| family | specialised for ≥ 1 label | shuffled baseline (mean, sd) | per label | "
        "per label, shuffled | "
        "layers above baseline + 3 sd |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in payload["specialisation"]:
        out.append(
            f"| {r['family']} | {_pct(r['specialised_fraction'])} | {_pct(r['baseline_fraction'])} ± "
            f"{_pct(r['baseline_sd'])} | {_pct(r['per_label_fraction'])} | {_pct(r['per_label_baseline'])} | "
            f"{r['layers_above_baseline']}/{r['layers']} |"
        )
    out += [
        "",
        "## 2. Functional experts: share of (label, expert) pairs that are functional, mean over layers",
        "",
        "| family | MoEfication param clustering | co-activation clustering | random partitions (5 seeds) | "
        "extent param / coact (count ÷ expected) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in payload["experts"]:
        out.append(
            f"| {r['family']} | {_pct(r['param'])} | {_pct(r['coact'])} | {_pct(r['random_mean'])} ± "
            f"{_pct(r['random_sd'])} | {r['param_extent']:.1f} / {r['coact_extent']:.1f} |"
        )
    out += [
        "",
        "## 3. Deactivating a label's functional experts (one per layer, param partition)",
        "",
        "Loss increase (nats) at the label's examples; controls of the same size: one random expert "
        "per layer "
        "(3 seeds) and the other labels' functional experts.",
        "",
        "| family | label | examples | base loss | own experts off | random experts off (mean ± sd, max) | "
        "other labels' experts off (mean) | > every random | > every other |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in payload["perturbation"]:
        out.append(
            f"| {r['family']} | {r['label']} | {r['examples']} | {r['base_loss']:.3f} | "
            f"{r['functional_delta']:+.4f} "
            f"| {r['random_delta_mean']:+.4f} ± {r['random_delta_sd']:.4f}, {r['random_delta_max']:+.4f} | "
            f"{r['other_functional_delta_mean']:+.4f} | {'yes' if r['beats_every_random'] else 'no'} | "
            f"{'yes' if r['beats_every_other_functional'] else 'no'} |"
        )
    if em is not None:
        st = payload["stabilisation"]
        out += [
            "",
            "## 4. Emergence over pretraining",
            "",
            f"{em['model']['activation']} decoder d={em['model']['dim']}, {em['model']['n_layers']} layers, "
            f"d_ff={em['model']['ffn_dim']} (plain), {em['experts']} experts; {len(em['steps'])} "
            "checkpoints every "
            f"{em['steps'][1] - em['steps'][0]} steps of {em['train']['tokens_per_step']} tokens "
            f"(`benchmarks/modularity/pretrain.py`). Similarity of each checkpoint to the final one; "
            f"stabilised = from that step on, stays ≥ {100 * STABLE_FRACTION:g}% of the way from its first "
            "to its last value (a curve that rises early and plateaus stabilises early).",
            "",
            "| measure | stabilised at step |",
            "| --- | --- |",
        ]
        for k, v in st.items():
            out.append(f"| {k} | {v} |")
        out += [
            "",
            "| step | param ARI | param overlap | coact ARI | neuron Spearman | expert Spearman | "
            "random-expert Spearman | best-function ARI | param ARI, seed 0 vs 1 |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for step, r, seed_ari in zip(em["steps"], em["to_final"], em["param_seed_ari"]):
            out.append(
                f"| {step} | {r['param_ari']:.3f} | {r['param_overlap']:.3f} | {r['coact_ari']:.3f} | "
                f"{r['neuron_spearman']:.3f} | {r['expert_spearman']:.3f} | "
                f"{r['random_expert_spearman']:.3f} | "
                f"{r['best_function_ari']:.3f} | "
                f"{seed_ari:.3f} |"
            )
    out += [
        "",
        f"Wall time: SmolLM2 {res['wall_seconds']:.0f} s"
        + (f", emergence {em['wall_seconds']:.0f} s." if em else "."),
    ]
    return "\n".join(out) + "\n"


def plot(res: dict, em: dict | None, payload: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = payload.get("series", {}).get("emergence", {})
    fig, axes = plt.subplots(3 if series else 2, 2, figsize=(11, 12 if series else 8))
    ax = axes[0, 0]
    for f, fam in res["families"].items():
        spec = fam["specialisation"]
        line = ax.plot([100 * x for x in spec["fraction"]], label=f"{f}")[0]
        ax.plot([100 * b["mean"] for b in spec["baseline"]], ls=":", color=line.get_color())
    ax.set(title="SmolLM2: neurons specialised for ≥ 1 label (dotted: shuffled)", xlabel="layer", ylabel="%")
    ax.legend(fontsize=8)
    ax = axes[0, 1]
    fams = [r["family"] for r in payload["experts"]]
    x = range(len(fams))
    for i, (key, label) in enumerate(
        (("param", "param clustering"), ("coact", "co-activation"), ("random_mean", "random"))
    ):
        vals = [100 * r[key] for r in payload["experts"]]
        err = [100 * r["random_sd"] for r in payload["experts"]] if key == "random_mean" else None
        ax.bar([j + 0.27 * (i - 1) for j in x], vals, width=0.27, yerr=err, label=label)
    ax.set_xticks(list(x), fams)
    ax.set(title="functional (label, expert) pairs (%)", ylabel="%")
    ax.legend(fontsize=8)
    ax = axes[1, 0]
    rows = payload["perturbation"]
    ax.errorbar(
        range(len(rows)),
        [r["random_delta_mean"] for r in rows],
        yerr=[r["random_delta_sd"] for r in rows],
        fmt="o",
        color="gray",
        label="random experts off",
    )
    ax.plot(range(len(rows)), [r["functional_delta"] for r in rows], "r^", label="own functional experts off")
    ax.plot(
        range(len(rows)),
        [r["other_functional_delta_mean"] for r in rows],
        "b.",
        label="other labels' experts off",
    )
    ax.set_xticks(range(len(rows)), [r["label"] for r in rows], rotation=70, fontsize=7)
    ax.set(title="loss increase at the label's examples (nats)")
    ax.legend(fontsize=7)
    ax = axes[1, 1]
    if em is not None:
        for k in (
            "param_ari",
            "coact_ari",
            "neuron_spearman",
            "expert_spearman",
            "random_expert_spearman",
            "best_function_ari",
        ):
            ax.plot(em["steps"][:-1], [r[k] for r in em["to_final"]], marker=".", label=k)
        ax.plot(em["steps"], em["param_seed_ari"], ls=":", color="gray", label="param ARI seed 0 vs 1")
        ax.set(
            title="first dense run (1600 steps): similarity to the final checkpoint",
            xlabel="step",
            ylim=(-0.05, 1.05),
        )
        ax.legend(fontsize=7)
    if series:
        plot_series(axes[2], series)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


T95 = {2: 12.706, 3: 4.303, 4: 3.182, 5: 2.776, 6: 2.571}
"""Two-sided 95% Student t quantiles by sample size (df = n - 1): mean ± t·sd/√n over seeds."""


def interval(values: list[float]) -> dict:
    """Mean, sd and the 95% t-interval half-width over seeds (0 for one value), min and max."""
    vals = [v for v in values if v is not None]
    if not vals:
        return {"n": 0, "mean": None, "sd": None, "half_width": None, "min": None, "max": None}
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    half = T95.get(len(vals), 2.0) * sd / len(vals) ** 0.5 if len(vals) > 1 else 0.0
    return {
        "n": len(vals),
        "mean": statistics.fmean(vals),
        "sd": sd,
        "half_width": half,
        "min": min(vals),
        "max": max(vals),
    }


def _iv(x: dict, fmt: str = "{:.0f}") -> str:
    if x["mean"] is None:
        return "–"
    return f"{fmt.format(x['mean'])} ± {fmt.replace('+', '').format(x['half_width'])}"


def knowledge_rows(kn: dict) -> list[dict]:
    """Per relation: own functional experts off vs random experts, over the parameter-clustering seeds."""
    pert = kn["families"]["knowledge"]["perturbation"]
    runs = pert["by_partition_seed"]
    rows = []
    for j, label in enumerate(kn["families"]["knowledge"]["labels"]):
        own = [r["delta"][j][j] for r in runs]
        rand = [d[j] for r in runs for d in r["random_delta"]]
        other = [r["delta"][g][j] for r in runs for g in range(len(r["delta"])) if g != j]
        wins = sum(r["per_label"][j]["beats_every_random"] for r in runs)
        rows.append(
            {
                "label": label,
                "examples": runs[0]["per_label"][j]["examples"],
                "base_loss": runs[0]["per_label"][j]["base_loss"],
                "own": interval(own),
                "random": interval(rand),
                "other_mean": statistics.fmean(other),
                "seeds_beating_every_random": wins,
                "partition_seeds": len(runs),
                "holds": min(own) > max(rand),
            }
        )
    return rows


def half_rise(em: dict) -> dict[str, float | None]:
    """Step at which each similarity-to-final curve first covers half of its rise (first to last point),
    linearly interpolated between checkpoints: a finer, continuous timing than `stabilisation` when few
    checkpoints are analysed."""
    steps = em["steps"][:-1]
    out: dict[str, float | None] = {}
    for key in KEYS:
        curve = [r[key] for r in em["to_final"]]
        rise = curve[-1] - curve[0]
        out[key] = None
        if rise <= 0:
            continue
        progress = [(c - curve[0]) / rise for c in curve]
        for i in range(1, len(progress)):
            if progress[i] >= 0.5:
                lo, hi = progress[i - 1], progress[i]
                out[key] = steps[i - 1] + (0.5 - lo) / (hi - lo) * (steps[i] - steps[i - 1])
                break
    return out


def series_rows(series: dict[str, dict]) -> dict:
    """Per kind: stabilisation step of each curve per seed and over seeds; the findings' per-seed checks."""
    out: dict = {}
    for kind in ("dense", "ssd"):
        members = {k: v for k, v in sorted(series.items()) if v["kind"] == kind and v.get("emergence")}
        if not members:
            continue
        per_seed = {}
        for tag, m in members.items():
            em = m["emergence"]
            st = stabilisation(em)
            gap = LEAD * (em["steps"][1] - em["steps"][0])
            expert, neuron, rnd = st["expert_spearman"], st["neuron_spearman"], st["random_expert_spearman"]
            part, best = st["param_ari"], st["best_function_ari"]
            per_seed[tag] = {
                "seed": m["seed"],
                "stabilised": st,
                "experts_before_neurons": None not in (expert, neuron, rnd)
                and expert + gap <= neuron
                and expert + gap <= rnd,
                "partition_before_best_function": None not in (part, best) and part + gap <= best,
                "half_rise": half_rise(em),
                "final_val_loss": m.get("val_loss"),
            }
        out[kind] = {
            "seeds": per_seed,
            "stabilised": {k: interval([p["stabilised"][k] for p in per_seed.values()]) for k in KEYS},
            "half_rise": {k: interval([p["half_rise"][k] for p in per_seed.values()]) for k in KEYS},
            "curves": {
                k: [
                    interval([m["emergence"]["to_final"][i][k] for m in members.values()])
                    for i in range(len(next(iter(members.values()))["emergence"]["to_final"]))
                ]
                for k in KEYS
            },
            "steps": next(iter(members.values()))["emergence"]["steps"],
            "modes": next(iter(members.values()))["emergence"].get("modes"),
        }
    return out


def final_rows(series: dict[str, dict]) -> dict:
    """Per kind and family, over seeds: specialised fraction vs shuffled, functional experts vs random
    partitions, and the labels whose own functional experts off hurt more than every random expert."""
    out: dict = {}
    for kind in ("dense", "ssd"):
        members = [v["final"] for k, v in sorted(series.items()) if v["kind"] == kind and v.get("final")]
        if not members:
            continue
        fams = {}
        for f in members[0]["families"]:
            spec = [specialisation_rows(m) for m in members]
            spec = [next(r for r in rows if r["family"] == f) for rows in spec]
            ex = [next(r for r in expert_rows(m) if r["family"] == f) for m in members]
            wins, labels, own, rand = [], 0, [], []
            for m in members:
                runs = m["families"][f]["perturbation"]["by_partition_seed"]
                labels = len(m["families"][f]["labels"])
                for r in runs:
                    wins.append(sum(x["beats_every_random"] for x in r["per_label"]) / labels)
                    own.append(
                        statistics.fmean(
                            r["delta"][j][j] for j in range(labels) if r["delta"][j][j] == r["delta"][j][j]
                        )
                    )
                    rand.append(statistics.fmean(x for d in r["random_delta"] for x in d if x == x))
            fams[f] = {
                "specialised": interval([r["specialised_fraction"] for r in spec]),
                "baseline": interval([r["baseline_fraction"] for r in spec]),
                "param": interval([r["param"] for r in ex]),
                "coact": interval([r["coact"] for r in ex]),
                "random": interval([r["random_mean"] for r in ex]),
                "labels": labels,
                "share_beating_every_random": interval(wins),
                "own_delta": interval(own),
                "random_delta": interval(rand),
            }
        out[kind] = {"seeds": len(members), "families": fams}
    return out


def load_series(base: Path, steps: int) -> dict[str, dict]:
    """{tag: {kind, seed, emergence, final}} from the series stage's raw files (missing parts omitted)."""
    out: dict[str, dict] = {}
    folder = base / f"series-{steps}"
    for path in sorted(folder.glob("*-s*.json")):
        what, kind, seed = path.stem.split("-")
        tag = f"{kind}-{seed}"
        entry = out.setdefault(tag, {"kind": kind, "seed": int(seed[1:])})
        entry[what] = json.loads(path.read_text())
    for tag, entry in out.items():
        metrics = base / f"series-{steps}" / tag / "metrics.jsonl"
        if metrics.exists():
            entry["val_curve"], entry["val_tokens"] = val_curve(metrics)
            entry["val_loss"] = entry["val_curve"][-1][1] if entry["val_curve"] else None
    return out


def _per_seed_header(srows: dict) -> list[str]:
    """Header and rule of a table with one column per (kind, seed), then one mean ± 95% column per kind."""
    seeds = [f"{k} s{v['seed']}" for k in srows for v in srows[k]["seeds"].values()]
    means = [f"{k} mean ± 95%" for k in srows]
    return [
        "| measure | " + " | ".join(seeds + means) + " |",
        "| --- |" + " --- |" * (len(seeds) + len(means)),
    ]


def series_losses(series: dict, steps: int) -> dict[str, dict]:
    """Per kind: `losses.loss_summary` of its members' validation curves."""
    out = {}
    for kind in ("dense", "ssd"):
        members = {t: m for t, m in sorted(series.items()) if m["kind"] == kind and m.get("val_curve")}
        if members:
            tokens = next(iter(members.values()))["val_tokens"]
            out[kind] = loss_summary({t: m["val_curve"] for t, m in members.items()}, steps, tokens)
    return out


def series_markdown(
    series: dict,
    srows: dict,
    frows: dict,
    steps: int,
    title: str = "## 4. Emergence over pretraining: dense vs SSD over seeds",
) -> list[str]:
    if not srows:
        return []
    any_em = next(v["emergence"] for v in series.values() if v.get("emergence"))
    tr = any_em["train"]
    ssd = next(
        (v["emergence"]["train"] for v in series.values() if v["kind"] == "ssd" and v.get("emergence")), None
    )
    analysed = len(any_em["steps"])
    out = [
        "",
        title,
        "",
        f"{any_em['model']['activation']} decoder d={any_em['model']['dim']}, {any_em['model']['n_layers']} "
        f"layers, d_ff={any_em['model']['ffn_dim']} (plain), {any_em['experts']} experts; {steps} steps of "
        f"{tr['tokens_per_step']} tokens, 32 checkpoints (every {steps // 32} steps), of which the "
        f"{analysed} every {any_em['steps'][1] - any_em['steps'][0]} steps are analysed "
        "(the shared 2-core CPU did not fit all 32). "
        f"`benchmarks/modularity/pretrain.py --kind dense|ssd --steps {steps}` (seeds "
        f"{', '.join(sorted({str(v['seed']) for v in series.values()}))}: run.seed, and ssd.seed), probes "
        "version 2.",
    ]
    losses = series_losses(series, steps)
    if losses:
        out += ["", *loss_markdown(losses)]
    if ssd:
        modes = srows.get("ssd", {}).get("modes") or []
        sparse_at = [s for s, m in zip(srows["ssd"]["steps"], modes, strict=False) if m == "sparse"]
        out += [
            "",
            f"SSD: {SSD_NOTE} top-{ssd['ssd_top_k']} of {any_em['experts']} experts, mode toggled at steps "
            f"{', '.join(map(str, ssd['ssd_switch_steps']))} (sparse in between; the last 20% dense). "
            "Analysed checkpoints saved in a sparse phase: steps "
            f"{', '.join(map(str, sparse_at)) or 'none'}; "
            "every checkpoint is read as the dense weights (a sparse phase's model is the dense FFN with the "
            "unselected experts' activations zeroed) with the neurons put back in their original order "
            "(`densa.analysis.modularity.series`).",
        ]
    out += [
        "",
        "Stabilised at step (from there on the similarity to the final checkpoint stays ≥ "
        f"{100 * STABLE_FRACTION:g}% of its rise); per seed, and mean ± 95% t-interval over seeds:",
        "",
        *_per_seed_header(srows),
    ]
    for key in KEYS:
        cells = [str(v["stabilised"][key]) for k in srows for v in srows[k]["seeds"].values()]
        cells += [_iv(srows[k]["stabilised"][key]) for k in srows]
        out.append(f"| {key} | " + " | ".join(cells) + " |")
    out.append(
        "| final valid loss | "
        + " | ".join(
            f"{v['final_val_loss']:.3f}" if v["final_val_loss"] is not None else "–"
            for k in srows
            for v in srows[k]["seeds"].values()
        )
        + " | "
        + " | ".join(
            _iv(interval([v["final_val_loss"] for v in srows[k]["seeds"].values()]), "{:.3f}") for k in srows
        )
        + " |"
    )
    out += [
        "",
        "Half-rise step (the curve first covers half of its rise from the first analysed checkpoint to the "
        "last, interpolated): a continuous timing, finer than the stabilisation step at this spacing.",
        "",
        *_per_seed_header(srows),
    ]
    for key in KEYS:
        cells = [
            f"{v['half_rise'][key]:.0f}" if v["half_rise"][key] is not None else "–"
            for k in srows
            for v in srows[k]["seeds"].values()
        ]
        cells += [_iv(srows[k]["half_rise"][key]) for k in srows]
        out.append(f"| {key} | " + " | ".join(cells) + " |")
    out += [
        "",
        "Similarity to the final checkpoint, mean over seeds (± 95% t-interval):",
        "",
        "| step | "
        + " | ".join(
            f"{k} {m}" for k in srows for m in ("param ARI", "neuron Sp.", "expert Sp.", "random-expert Sp.")
        )
        + " |",
        "| --- |" + " --- |" * (4 * len(srows)),
    ]
    first = next(iter(srows.values()))
    for i, step in enumerate(first["steps"][:-1]):
        cells = []
        for k in srows:
            for m in ("param_ari", "neuron_spearman", "expert_spearman", "random_expert_spearman"):
                cells.append(_iv(srows[k]["curves"][m][i], "{:.3f}"))
        mode = (srows.get("ssd", {}).get("modes") or [None] * (i + 1))[i]
        out.append(f"| {step}{' (SSD sparse)' if mode == 'sparse' else ''} | " + " | ".join(cells) + " |")
    if frows:
        out += [
            "",
            "### The series' final checkpoints",
            "",
            "Seeds: "
            + ", ".join(f"{kind} {fr['seeds']}" for kind, fr in frows.items())
            + ". Specialisation and functional pairs: mean ± 95% over model seeds; perturbation columns: "
            "over model seeds × 3 parameter clusterings (functional experts found in each), 25 sequences "
            "per label.",
            "",
            "| kind | family | specialised | shuffled | functional pairs param / coact / random | "
            "labels: own experts off > every random (share) | own experts off (nats) | random experts off |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for kind, fr in frows.items():
            for f, r in fr["families"].items():
                out.append(
                    f"| {kind} | {f} | {_iv(r['specialised'], '{:.3f}')} | {_iv(r['baseline'], '{:.3f}')} | "
                    f"{_iv(r['param'], '{:.3f}')} / {_iv(r['coact'], '{:.3f}')} / "
                    f"{_iv(r['random'], '{:.3f}')} | "
                    f"{_iv(r['share_beating_every_random'], '{:.2f}')} of {r['labels']} | "
                    f"{_iv(r['own_delta'], '{:+.3f}')} | {_iv(r['random_delta'], '{:+.3f}')} |"
                )
    return out


SSD_NOTE = "densa's switchable sparse-dense training (`ssd:` recipe keys, docs/ssd.md),"


def knowledge_markdown(kn: dict, rows: list[dict]) -> list[str]:
    p = kn["probes"]
    return [
        "",
        "## 3b. Knowledge probes version 2 on SmolLM2",
        "",
        f"Probes version {p['version']}: {p['sequences']['knowledge']} fact sentences "
        f"({len(rows)} relations, three templates each, up to 200 facts per relation); "
        f"{kn['settings']['perturb_per_label']} facts per relation in the perturbation set; functional "
        f"experts found in {kn['settings']['partition_seeds']} parameter clusterings (k-means seeds); random "
        f"controls: {kn['settings']['perturb_random']} per clustering. Knowledge family only "
        "(`run.py --stage knowledge`, "
        f"{kn['wall_seconds']:.0f} s); the rows above are probes version 1 (12 facts per relation).",
        "",
        "| relation | examples | base loss | own experts off (mean ± 95% over clusterings) | "
        "random experts off (mean ± 95%, all clusterings) | other relations' experts off | "
        "clusterings where own > every random "
        "| own (min) > random (max) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        *[
            f"| {r['label']} | {r['examples']} | {r['base_loss']:.3f} | {_iv(r['own'], '{:+.3f}')} | "
            f"{_iv(r['random'], '{:+.3f}')} | {r['other_mean']:+.3f} | {r['seeds_beating_every_random']}/"
            f"{r['partition_seeds']} | {'yes' if r['holds'] else 'no'} |"
            for r in rows
        ],
    ]


def series_findings(srows: dict, steps: int) -> list[tuple[str, str, bool]]:
    """The emergence findings of one series length (dense and SSD over seeds), each labelled by its steps."""
    findings: list[tuple[str, str, bool]] = []
    for kind, sr in srows.items():
        n = len(sr["seeds"])
        ok = sum(v["experts_before_neurons"] for v in sr["seeds"].values())
        st = sr["stabilised"]
        findings.append(
            (
                f"expert-level function stabilises before single neurons' ({kind}, {n} seeds, {steps} steps)",
                f"expert Spearman stable from step {_iv(st['expert_spearman'])}, neurons "
                f"{_iv(st['neuron_spearman'])}, "
                f"random-partition experts {_iv(st['random_expert_spearman'])}; a lead of ≥ {LEAD} analysed "
                f"checkpoints over both in {ok}/{n} seeds",
                n > 1 and ok == n,
            )
        )
        ok = sum(v["partition_before_best_function"] for v in sr["seeds"].values())
        findings.append(
            (
                "the expert partition settles before neurons' best-function grouping "
                f"({kind}, {n} seeds, {steps} steps)",
                f"param ARI stable from step {_iv(st['param_ari'])}, best-function ARI "
                f"{_iv(st['best_function_ari'])}"
                f"; lead ≥ {LEAD} checkpoints in {ok}/{n} seeds",
                n > 1 and ok == n,
            )
        )
    for kind, sr in srows.items():
        seeds = list(sr["seeds"].values())
        ex = [v["half_rise"]["expert_spearman"] for v in seeds]
        ne = [v["half_rise"]["neuron_spearman"] for v in seeds]
        ra = [v["half_rise"]["random_expert_spearman"] for v in seeds]
        ok = None not in ex + ne + ra and max(ex) < min(ne) and max(ex) < min(ra)
        findings.append(
            (
                f"... by half-rise step ({kind}, {len(seeds)} seeds, {steps} steps)",
                f"expert Spearman reaches half its rise at step {', '.join(_f(x) for x in ex)}, neurons at "
                f"{', '.join(_f(x) for x in ne)}, random-partition experts at {', '.join(_f(x) for x in ra)} "
                "(holds if every seed's expert curve is earlier than every seed's neuron and random-expert "
                "curves)",
                len(seeds) > 1 and ok,
            )
        )
        pa = [v["half_rise"]["param_ari"] for v in seeds]
        be = [v["half_rise"]["best_function_ari"] for v in seeds]
        findings.append(
            (
                f"... the partition before best-function grouping, by half-rise step ({kind}, {steps} steps)",
                f"param ARI half-rise at step {', '.join(_f(x) for x in pa)}, best-function ARI at "
                f"{', '.join(_f(x) for x in be)} (holds if every seed's partition is earlier than every "
                "seed's grouping)",
                len(seeds) > 1 and None not in pa + be and max(pa) < min(be),
            )
        )
    if {"dense", "ssd"} <= set(srows):
        d = [v["half_rise"]["param_ari"] for v in srows["dense"]["seeds"].values()]
        s_ = [v["half_rise"]["param_ari"] for v in srows["ssd"]["seeds"].values()]
        findings.append(
            (
                "SSD's expert partition settles earlier than dense training's, by half-rise step "
                f"({steps} steps)",
                f"param ARI half-rise at step {', '.join(_f(x) for x in s_)} (SSD) vs "
                f"{', '.join(_f(x) for x in d)} (dense); holds if every SSD seed is earlier than every "
                "dense seed",
                None not in d + s_ and max(s_) < min(d) and len(d) > 1,
            )
        )
        d = [v["stabilised"]["param_ari"] for v in srows["dense"]["seeds"].values()]
        s_ = [v["stabilised"]["param_ari"] for v in srows["ssd"]["seeds"].values()]
        em0 = srows["dense"]["steps"]
        gap = LEAD * (em0[1] - em0[0])
        ok = None not in d + s_ and max(s_) + gap <= min(d)
        findings.append(
            (
                "SSD's expert partition stabilises earlier than dense training's (not a claim of the paper; "
                f"{steps} steps)",
                f"param ARI stable from step {', '.join(map(str, s_))} (SSD seeds) vs "
                f"{', '.join(map(str, d))} (dense seeds); holds if every SSD seed leads every dense seed by "
                f"≥ {LEAD} analysed checkpoints",
                ok,
            )
        )
    return findings


def write_report(base: Path, steps: int) -> None:
    res = json.loads((base / "smollm2.json").read_text())
    em_path = base / "emergence.json"
    em = json.loads(em_path.read_text()) if em_path.exists() else None
    kn_path = base / "knowledge.json"
    kn = json.loads(kn_path.read_text()) if kn_path.exists() else None
    series = load_series(base, steps)
    payload: dict = {
        "name": NAME,
        "machine": machine_info(),
        "specialisation": specialisation_rows(res),
        "experts": expert_rows(res),
        "perturbation": perturbation_rows(res),
    }
    spec_ok = all(r["holds"] for r in payload["specialisation"])
    exp_ok = [r["param_holds"] or r["coact_holds"] for r in payload["experts"]]
    pert = payload["perturbation"]
    beat_rand = sum(r["beats_every_random"] for r in pert)
    beat_other = sum(r["beats_every_other_functional"] for r in pert)
    findings = [
        (
            "neurons are specialised (fraction above a shuffled-label baseline)",
            "; ".join(
                f"{r['family']} {_pct(r['specialised_fraction'])} vs {_pct(r['baseline_fraction'])}"
                for r in payload["specialisation"]
            ),
            spec_ok,
        ),
        (
            "functional experts exist (MoEfication experts concentrate specialised neurons beyond "
            "random partitions)",
            "; ".join(
                f"{r['family']} param {_pct(r['param'])} / coact {_pct(r['coact'])} vs random "
                f"{_pct(r['random_mean'])} ± {_pct(r['random_sd'])}"
                for r in payload["experts"]
            ),
            all(exp_ok),
        ),
        (
            "deactivating a functional expert hurts its function more than random experts",
            f"own experts off > every random seed for {beat_rand}/{len(pert)} labels (probes v1)",
            beat_rand > len(pert) / 2,
        ),
        (
            "... and more than other functions' experts (specificity; not claimed by the paper's abstract)",
            f"own experts off > every other label's functional experts for {beat_other}/{len(pert)} labels",
            beat_other > len(pert) / 2,
        ),
    ]
    if kn is not None:
        rows = knowledge_rows(kn)
        payload["knowledge_v2"] = rows
        held = sum(r["holds"] for r in rows)
        findings.append(
            (
                "... knowledge relations, probes v2 (100 facts per relation, 3 clusterings)",
                f"own experts off (every clustering) > every random expert (every clustering) for "
                f"{held}/{len(rows)} relations",
                held > len(rows) / 2,
            )
        )
    srows = series_rows(series)
    frows = final_rows(series)
    payload["series"] = {
        "steps": steps,
        "emergence": srows,
        "final": frows,
        "losses": series_losses(series, steps),
    }
    findings += series_findings(srows, steps)
    earlier = {}
    for other in sorted(int(p.name.split("-")[1]) for p in base.glob("series-*") if p.name[7:].isdigit()):
        if other == steps:
            continue
        oseries = load_series(base, other)
        orows = series_rows(oseries)
        if orows:
            earlier[other] = (oseries, orows, final_rows(oseries))
            findings += series_findings(orows, other)
    payload["series_earlier"] = {
        str(k): {"emergence": r, "final": f, "losses": series_losses(se, k)}
        for k, (se, r, f) in earlier.items()
    }
    if em is not None:
        st = stabilisation(em)
        payload["stabilisation"] = st
        expert, neuron, rnd = st["expert_spearman"], st["neuron_spearman"], st["random_expert_spearman"]
        part, best = st["param_ari"], st["best_function_ari"]
        gap = LEAD * (em["steps"][1] - em["steps"][0])
        findings.append(
            (
                "expert-level function stabilises before single neurons' (first dense run, 1600 steps)",
                f"MoEfication experts stable from step {expert}; neurons from step {neuron}; experts of a "
                f"random partition from step {rnd} (a lead of ≥ {LEAD} checkpoints over both; one seed)",
                None not in (expert, neuron, rnd) and expert + gap <= neuron and expert + gap <= rnd,
            )
        )
        findings.append(
            (
                "the expert partition settles before neurons' best-function grouping (first dense run)",
                f"partition ARI to the final model stable from step {part} of {em['steps'][-1]}; "
                f"best-function ARI from step {best}",
                None not in (part, best) and part + gap <= best,
            )
        )
    payload["findings"] = findings
    payload["raw"] = {
        "smollm2": res,
        "emergence": em,
        "knowledge": kn,
        "series": series,
        "series_earlier": {str(k): se for k, (se, _, _) in earlier.items()},
    }
    md = markdown(res, em, payload)
    extra = (knowledge_markdown(kn, payload["knowledge_v2"]) if kn else []) + series_markdown(
        series, srows, frows, steps
    )
    head, _, tail = md.partition("\n## 4. Emergence over pretraining")
    if tail:
        tail = "\n## 4b. The first dense run: 1600 steps, one seed" + tail.split("\n", 1)[1]
    for k, (se, r, f) in earlier.items():
        tail += "\n".join(
            series_markdown(se, r, f, k, f"## 4c. The {k}-step series: dense vs SSD over seeds")
        )
        tail += "\n"
    md = head + "\n".join(extra) + "\n" + tail
    write_results(NAME, payload, md)
    plot(res, em, payload, RESULTS_DIR / f"{NAME}.png")
    print(f"wrote {RESULTS_DIR / NAME}.{{json,md,png}}")


def plot_series(axes: object, series: dict) -> None:
    """Dense vs SSD over seeds: mean curves with 95% bands, and each seed's half-rise steps."""
    ax = axes[0]
    styles = {"dense": "-", "ssd": "--"}
    colors = {
        "param_ari": "C0",
        "neuron_spearman": "C2",
        "expert_spearman": "C3",
        "random_expert_spearman": "C4",
    }
    for kind, sr in series.items():
        steps = sr["steps"][:-1]
        for key, color in colors.items():
            mean = [c["mean"] for c in sr["curves"][key]]
            half = [c["half_width"] for c in sr["curves"][key]]
            ax.plot(steps, mean, styles[kind], color=color, label=f"{kind} {key}")
            ax.fill_between(
                steps,
                [m - h for m, h in zip(mean, half)],
                [m + h for m, h in zip(mean, half)],
                color=color,
                alpha=0.08,
            )
        if kind == "ssd" and sr.get("modes"):
            for step, mode in zip(sr["steps"], sr["modes"]):
                if mode == "sparse":
                    ax.axvline(step, color="gray", alpha=0.2, lw=4)
    ax.set(
        title="series, mean over seeds ± 95% (solid dense, dashed SSD; gray: SSD sparse checkpoints)",
        xlabel="step",
        ylim=(-0.05, 1.05),
    )
    ax.title.set_fontsize(8)
    ax.legend(fontsize=6, ncol=2)
    ax = axes[1]
    for i, (kind, sr) in enumerate(series.items()):
        for j, key in enumerate(KEYS):
            vals = [v["half_rise"][key] for v in sr["seeds"].values() if v["half_rise"][key] is not None]
            ax.plot(
                [j + 0.2 * (i - 0.5)] * len(vals),
                vals,
                "o" if kind == "dense" else "s",
                alpha=0.7,
                color="C0" if kind == "dense" else "C1",
                label=kind if j == 0 else None,
            )
    ax.set_xticks(range(len(KEYS)), KEYS, rotation=30, fontsize=7)
    ax.set(title="half-rise step, each seed (circles dense, squares SSD)", ylabel="step")
    ax.legend(fontsize=7)
