"""benchmarks/results/modularity.{json,md,png} from the raw stage files of benchmarks/modularity/run.py."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from benchmarks.common import RESULTS_DIR, machine_info, write_results

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

    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
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
        ax.set(title="emergence: similarity to the final checkpoint", xlabel="step", ylim=(-0.05, 1.05))
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(smollm2: Path, emergence: Path) -> None:
    res = json.loads(smollm2.read_text())
    em = json.loads(emergence.read_text()) if emergence.exists() else None
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
            f"own experts off > every random seed for {beat_rand}/{len(pert)} labels",
            beat_rand > len(pert) / 2,
        ),
        (
            "... and more than other functions' experts (specificity; not claimed by the paper's abstract)",
            f"own experts off > every other label's functional experts for {beat_other}/{len(pert)} labels",
            beat_other > len(pert) / 2,
        ),
    ]
    if em is not None:
        st = stabilisation(em)
        payload["stabilisation"] = st
        expert, neuron, rnd = st["expert_spearman"], st["neuron_spearman"], st["random_expert_spearman"]
        part, best = st["param_ari"], st["best_function_ari"]
        gap = LEAD * (em["steps"][1] - em["steps"][0])
        findings.append(
            (
                "expert-level function stabilises before single neurons' (the paper's Spearman curves)",
                f"MoEfication experts stable from step {expert}; neurons from step {neuron}; experts of a "
                f"random partition from step {rnd} (a lead of ≥ {LEAD} checkpoints over both is required; "
                "one run, no seeds)",
                None not in (expert, neuron, rnd) and expert + gap <= neuron and expert + gap <= rnd,
            )
        )
        findings.append(
            (
                "the expert partition itself settles early, before neurons' best-function grouping",
                f"partition ARI to the final model stable from step {part} of {em['steps'][-1]}; "
                f"best-function ARI from step {best}",
                None not in (part, best) and part + gap <= best,
            )
        )
    payload["findings"] = findings
    payload["raw"] = {"smollm2": res, "emergence": em}
    write_results(NAME, payload, markdown(res, em, payload))
    plot(res, em, payload, RESULTS_DIR / f"{NAME}.png")
    print(f"wrote {RESULTS_DIR / NAME}.{{json,md,png}}")
