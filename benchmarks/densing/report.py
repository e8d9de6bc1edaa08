"""Scores, densities, claims, table and plots of the densing benchmark (called by run.py report)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import RESULTS_DIR, machine_info, write_results
from benchmarks.densing.run import (
    EXPERTS,
    MOEFIED,
    NAME,
    OUT,
    PARENT,
    REFERENCE,
    TOP_K,
    cfg_of,
    continued_cfg,
    models,
    moefied,
    prosparse_cfg,
    pruned,
    retrained_cfg,
)
from densa.density import DensityError, Reference, estimate_density, load_suite
from densa.launch.density_series import final_checkpoint, score_checkpoint

PLOTS = RESULTS_DIR / NAME


def _density(ref: Reference, row: dict) -> dict:
    """ρ via S (the paper) where the sigmoid can invert S; ρ_L via the loss always (when above the floor)."""
    out = dict(row)
    try:
        d = estimate_density(ref, row["N"], row["loss"], row["score"], n_boot=200, via="loss").to_dict()
        out |= {"rho_loss": d["rho"], "rho_loss_interval": d["rho_interval"], "n_hat_loss": d["n_hat"]}
        d = estimate_density(ref, row["N"], row["loss"], row["score"], n_boot=200).to_dict()
        out |= {"rho": d["rho"], "rho_interval": d["rho_interval"], "n_hat": d["n_hat"]}
    except DensityError as err:  # reported, never a NaN density
        out["error"] = str(err)
    return out


def held_out_sizes(ref_data: dict, d0: float) -> list[dict]:
    """Calibration by leaving one size out: for every interior size of the series, refit both steps
    without any of its runs and estimate the density of its run at D0 (a reference-recipe model that the
    fit never saw, at a size inside the fitted range)."""
    from densa.density import fit_reference

    pts = ref_data["reference"]
    sizes = sorted({r["N"] for r in pts})
    rows = []
    for n in sizes[1:-1]:
        at_d0 = next(r for r in pts if r["N"] == n and r["D"] == d0)
        size = at_d0["name"].rsplit("_", 1)[0]
        bounds = ref_data["sigmoid"].get("bounds")
        kept = [r for r in pts if r["N"] != n]
        refit = Reference.from_dict(fit_reference(kept, [], d0=d0, score_bounds=bounds and tuple(bounds)))
        row = {
            **at_d0,
            "name": f"{size}@D0 (size left out)",
            "group": "calibration (series size left out of the fit)",
        }
        rows.append(_density(refit, row))
    return rows


def score_moe(folder: Path, cfg: Any, tasks: list, tokens: int) -> dict[str, Any]:
    """Loss and score of an MoE folder at its top-k; N counts the parameters a token activates (attention,
    norms, routers and TOP_K of EXPERTS experts per layer). Cached in FOLDER/density_score.json."""
    cache = folder / "density_score.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    from densa.data.tokenizer import load_tokenizer
    from densa.density.scoring import score_suite
    from densa.sparse_moe.inference import activated_params, load_moe

    model = load_moe(folder)
    s = score_suite(model, load_tokenizer(cfg.data.tokenizer).encode, tasks, max_len=cfg.model.max_seq_len)
    n_total = model.config.num_params(include_embeddings=False)
    row = {"name": folder.name, "N": activated_params(model), "N_total": n_total, "D": tokens}
    row |= {"loss": s.loss, "score": s.score, "tasks": s.tasks}
    cache.write_text(json.dumps(row, indent=1) + "\n")
    return row


def scored_models(series: Any, tasks: list) -> tuple[list[dict], list[str]]:
    """Every model of run.models plus the derived ones (pruned, retrained, ProSparse, MoEfied) that exist."""
    rows, missing = [], []
    specs = models(int(series.d0))
    done: dict[str, dict] = {}
    for name, spec in specs.items():
        cfg = cfg_of(series, name, spec)
        found = final_checkpoint(cfg)
        if found is None:
            missing.append(name)
            continue
        done[name] = {**score_checkpoint(cfg, found, tasks), "name": name, "group": spec["group"]}
        rows.append(done[name])
    if PARENT in done:
        parent = cfg_of(series, PARENT, specs[PARENT])
        folder, _ = pruned(series)
        row = score_checkpoint(parent, folder, tasks)
        rows.append({**row, "name": "pruned50_s1", "group": "magnitude-pruned 50%, no retraining"})
        derived = [
            (retrained_cfg(series, folder), "pruned50_s1_retrained", "pruned 50% + retrained D0/4"),
            (prosparse_cfg(series), "prosparse_s1", "ProSparse: ReGLU + L1, finetuned D0/4"),
            (continued_cfg(series), "ref_s1_continued", "control: the parent trained D0/4 more, unchanged"),
        ]
        for cfg, name, group in derived:
            found = final_checkpoint(cfg)
            if found is None:
                missing.append(name)
                continue
            row = score_checkpoint(cfg, found, tasks)
            row["D"] += done[PARENT]["D"]  # the parent's tokens and the continuation's
            rows.append({**row, "name": name, "group": group})
    for name, source in MOEFIED.items():
        if source not in done:
            missing.append(name)
            continue
        cfg = cfg_of(series, source, specs[source])
        row = score_moe(moefied(series, name), cfg, tasks, done[source]["D"])
        group = f"{source} MoEfied, top-{TOP_K} of {EXPERTS} experts (N: activated)"
        rows.append({**row, "name": name, "group": group})
    return rows, missing


SEEDS = (PARENT, "ref_s1@D0_seed1", "ref_s1@D0_seed2")


def seed_spread(by: dict, key: str) -> float | None:
    """max/min of `key` over the parent's seed replicas: the ratio a comparison must exceed to count."""
    values = [by[n][key] for n in SEEDS if n in by and key in by[n]]
    return max(values) / min(values) if len(values) >= 2 else None


def _cmp(a: dict, b: dict, op: str, by: dict) -> dict[str, Any]:
    """a's density over b's on ρ_L and (where both exist) on ρ; "holds" only when the ratio is beyond the
    seed spread in the claimed direction, "opposite" when beyond it the other way, else "within noise"."""
    out: dict[str, Any] = {}
    if "floor" in a.get("error", "") and op == ">":  # no reference size at D0 reaches a's loss
        return {
            "rho_loss": {"verdict": "holds (beyond every N)"},
            "rho": {"verdict": "holds (beyond every N)"},
        }
    for key in ("rho_loss", "rho"):
        if key not in a or key not in b:
            out[key] = "n/a (not invertible)"
            continue
        ratio, spread = a[key] / b[key], seed_spread(by, key)
        claimed = ratio if op == ">" else 1 / ratio
        if spread is None:
            verdict = "no seed replicas"
        else:
            verdict = "holds" if claimed > spread else "opposite" if 1 / claimed > spread else "within noise"
        out[key] = {"ratio": round(ratio, 4), "seed_spread": spread and round(spread, 4), "verdict": verdict}
    return out


def claims(rows: list[dict]) -> dict[str, Any]:
    by = {r["name"]: r for r in rows if "rho_loss" in r or "floor" in r.get("error", "")}
    out: dict[str, Any] = {}
    calib = [r for r in by.values() if r["group"].startswith("calibration") and "rho_loss" in r]
    out["calibration_rho_loss_in_0.8_1.25"] = {r["name"]: 0.8 <= r["rho_loss"] <= 1.25 for r in calib}
    out["calibration_rho_in_0.8_1.25"] = {r["name"]: 0.8 <= r["rho"] <= 1.25 for r in calib if "rho" in r}
    out["seed_spread (max/min over 3 seeds of the parent)"] = {
        k: seed_spread(by, k) for k in ("rho_loss", "rho")
    }
    pairs = [  # (claim, model, compared with, direction)
        ("longer_trained_denser", "ref_d48L2@2D0", "ref_d48L2@D0", ">"),
        ("better_mix_denser", "mix90_s1@D0", PARENT, ">"),
        ("relu2_denser_than_swiglu_equal_tokens", "relu2_s1@D0", PARENT, ">"),
        ("ssd_denser_than_dense_reglu", "ssd_s1@D0", "reglu_s1@D0", ">"),
        ("prosparse_less_dense_than_parent", "prosparse_s1", PARENT, "<"),
        ("prosparse_less_dense_than_continued_parent", "prosparse_s1", "ref_s1_continued", "<"),
        ("pruned_less_dense_than_parent", "pruned50_s1", PARENT, "<"),
        ("pruned_retrained_less_dense_than_parent", "pruned50_s1_retrained", PARENT, "<"),
        (
            "pruned_retrained_less_dense_than_continued_parent",
            "pruned50_s1_retrained",
            "ref_s1_continued",
            "<",
        ),
        ("moefied_ssd_denser (activated N)", "moefied_ssd_s1@D0", "moefied_reglu_s1@D0", ">"),
        ("moefied_reglu_denser_than_reglu (activated N)", "moefied_reglu_s1@D0", "reglu_s1@D0", ">"),
    ]
    for claim, a, b, op in pairs:
        if a in by and b in by:
            out[f"{claim}: {a} {op} {b}"] = _cmp(by[a], by[b], op, by)
    models = [r for r in by.values() if "rho_loss" in r and "left out" not in r["name"]]
    if models:
        best = min(models, key=lambda r: r["loss"])
        densest = max(models, key=lambda r: r["rho_loss"])
        out["best_performing_is_not_densest (lowest L vs highest ρ_L)"] = {
            "best": best["name"], "densest": densest["name"], "holds": best["name"] != densest["name"]
        }  # fmt: skip
    return out


def plots(ref_data: dict, ref: Reference, rows: list[dict]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    PLOTS.mkdir(parents=True, exist_ok=True)
    written = []
    fig, ax = plt.subplots(figsize=(6, 4))
    pts = ref_data["reference"]
    held = {h["name"] for h in ref_data["heldout"]}
    xs = np.linspace(min(r["loss"] for r in pts + rows) - 0.2, max(r["loss"] for r in pts + rows) + 0.2, 200)
    ax.plot(xs, ref.sigmoid.predict(xs), "k-", label="fitted S(L)")
    fit_pts = [r for r in pts if r["name"] not in held]
    ax.scatter([r["loss"] for r in fit_pts], [r["score"] for r in fit_pts], c="k", s=20, label="reference")
    ax.scatter(
        [h["loss"] for h in ref_data["heldout"]], [h["score"] for h in ref_data["heldout"]],
        marker="^", c="tab:red", s=40, label="held out (predicted)",
    )  # fmt: skip
    ax.scatter([r["loss"] for r in rows], [r["score"] for r in rows], marker="s", s=20, label="models")
    ax.set(xlabel="conditional loss L (nats/token)", ylabel="score S (mean accuracy)", title="S(L)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(PLOTS / "sigmoid.png", dpi=120)
    written.append("sigmoid.png")
    fig, ax = plt.subplots(figsize=(6, 4))
    ns = np.geomspace(min(r["N"] for r in pts) * 0.8, max(r["N"] for r in pts) * 1.2, 50)
    for d in sorted({r["D"] for r in pts}):
        sel = sorted((r for r in pts if r["D"] == d), key=lambda r: r["N"])
        (line,) = ax.plot([r["N"] for r in sel], [r["loss"] for r in sel], "o", label=f"D = {d:.3g}")
        ax.plot(ns, ref.law.predict(ns, np.full_like(ns, d)), "-", c=line.get_color(), lw=0.8)
    calib = [r for r in rows if r["group"].startswith("calibration")]
    ax.scatter([r["N"] for r in calib], [r["loss"] for r in calib], marker="^", c="tab:red", label="held out")
    ax.set(xscale="log", xlabel="non-embedding parameters N", ylabel="conditional loss L", title="L(N, D)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(PLOTS / "loss_law.png", dpi=120)
    written.append("loss_law.png")
    dense = [r for r in rows if "rho_loss" in r]
    if dense:
        fig, ax = plt.subplots(figsize=(7, 4))
        y = np.arange(len(dense))
        rho = np.array([r["rho_loss"] for r in dense])
        lo = rho - np.array([r["rho_loss_interval"][0] for r in dense])
        hi = np.array([r["rho_loss_interval"][1] for r in dense]) - rho
        ax.errorbar(rho, y, xerr=[np.maximum(lo, 0), np.maximum(hi, 0)], fmt="o", label="ρ_L (via L), 95% CI")
        via_s = [(i, r["rho"]) for i, r in enumerate(dense) if "rho" in r]
        if via_s:
            ax.scatter(
                [v for _, v in via_s], [i + 0.2 for i, _ in via_s], marker="x", c="tab:red", label="ρ (via S)"
            )
        ax.axvline(1.0, c="gray", lw=0.8)
        ax.axvspan(0.8, 1.25, color="gray", alpha=0.15)
        ax.set(yticks=y, yticklabels=[r["name"] for r in dense], xscale="log", xlabel="density ρ = N̂ / N")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(PLOTS / "density.png", dpi=120)
        written.append("density.png")
    plt.close("all")
    return written


def markdown(payload: dict) -> str:
    ref = payload["reference"]
    law, sig, held = ref["loss_law"], ref["sigmoid"], ref["heldout"]
    lines = [
        "# Densing Law at toy scale (`benchmarks/densing/`)",
        "",
        f"Reference series: {len(ref['reference'])} runs; D0 = {ref['d0']:.0f} tokens.",
        f"L(N, D) = {law['a']:.4g}·N^-{law['alpha']:.4f} + {law['b']:.4g}·D^-{law['beta']:.4f}, "
        f"R² = {law['r2']:.4f}, max |residual| = {max(map(abs, law['residuals'])):.4f}.",
        f"S(L) = {sig['c']:.4f}/(1+exp(-({sig['gamma']:.4f})(L-{sig['l']:.4f}))) + {sig['d']:.4f}, "
        f"R² = {sig['r2']:.4f} on {len(ref['sigmoid_points'])} points.",
        "",
        "| held-out point | L | S | S predicted |",
        "| --- | ---: | ---: | ---: |",
        *[f"| {h['name']} | {h['loss']:.4f} | {h['score']:.4f} | {h['predicted']:.4f} |" for h in held],
        "",
        "| model | group | N | D | L | S | ρ [95% CI] | ρ_L [95% CI] |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for r in payload["models"]:
        dens = dens_l = "—"
        if "rho_loss" in r:
            dens_l = f"{r['rho_loss']:.3f} [{r['rho_loss_interval'][0]:.3f}, {r['rho_loss_interval'][1]:.3f}]"
        if "rho" in r:
            dens = f"{r['rho']:.3f} [{r['rho_interval'][0]:.3f}, {r['rho_interval'][1]:.3f}]"
        elif "floor" in r.get("error", ""):
            dens = dens_l = "beyond every N (L below the law's floor at D0)"
        elif "error" in r:
            dens = "not invertible" if "outside the fitted sigmoid" in r["error"] else f"error: {r['error']}"
        lines.append(
            f"| {r['name']} | {r['group']} | {r['N']} | {r['D']} | {r['loss']:.4f} | {r['score']:.4f} "
            f"| {dens} | {dens_l} |"
        )
    lines += ["", f"Missing (not trained in time): {', '.join(payload['missing']) or 'none'}.", ""]
    lines += ["Claims:", "", "```", json.dumps(payload["claims"], indent=1), "```", ""]
    return "\n".join(lines)


def report(series: Any) -> None:
    ref_data = json.loads(Path(REFERENCE).read_text())
    ref = Reference.from_dict(ref_data)
    tasks = load_suite(ref_data["tasks_dir"])
    rows, missing = scored_models(series, tasks)
    rows = held_out_sizes(ref_data, ref.d0) + [_density(ref, r) for r in rows]
    payload = {
        "config": {"series": "recipes/density/series.yaml", "out": OUT, "n_boot": 200},
        "machine": machine_info(),
        "reference": ref_data,
        "models": rows,
        "missing": missing,
        "claims": claims(rows),
    }
    payload["plots"] = plots(ref_data, ref, rows)
    write_results(NAME, payload, markdown(payload))
    print(markdown(payload))
