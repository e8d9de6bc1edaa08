"""Files written by `densa analyze modularity|emergence`: JSON, a markdown summary and PNG heat maps."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from densa.outputs import write_text_atomic


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def modularity_markdown(result: dict) -> str:
    """Per family: specialised share vs shuffled baseline, functional experts per partition, perturbation."""
    lines = [
        f"# Modularity of {result.get('model', 'the model')}",
        "",
        f"{result['layers']} layers × {result['ffn_dim']} FFN neurons, "
        f"{result['settings']['experts']} experts per layer; top "
        f"{100 * result['settings']['top_fraction']:g}% neurons per label, functional at "
        f"p ≤ {result['settings']['alpha']:g}.",
        "",
        "| family | examples | specialised neurons (mean over layers) | shuffled baseline | functional "
        "(label, expert) pairs: param / coact / random |",
        "| --- | --- | --- | --- | --- |",
    ]
    for f, fam in result["families"].items():
        spec = fam["specialisation"]
        base = statistics.fmean(b["mean"] for b in spec["baseline"])
        ex = fam["experts"]
        lines.append(
            f"| {f} | {fam['examples']} | {100 * statistics.fmean(spec['fraction']):.1f}% "
            f"| {100 * base:.1f}% | "
            + " / ".join(
                f"{100 * ex[p]['functional_fraction']['mean']:.2f}%" for p in ("param", "coact", "random")
            )
            + " |"
        )
    if any("perturbation" in fam for fam in result["families"].values()):
        lines += [
            "",
            "## Deactivating functional experts (loss increase at the label's examples, nats)",
            "",
            "| family | label | base loss | own functional experts | random experts (mean ± sd) | other "
            "labels' functional experts (mean) |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for f, fam in result["families"].items():
            for row in fam.get("perturbation", {}).get("per_label", []):
                lines.append(
                    f"| {f} | {row['label']} | {row['base_loss']:.3f} | {row['functional_delta']:+.4f} | "
                    f"{row['random_delta_mean']:+.4f} ± {row['random_delta_sd']:.4f} | "
                    f"{row['other_functional_delta_mean']:+.4f} |"
                )
    return "\n".join(lines) + "\n"


def plot_modularity(result: dict, path: Path) -> Path:
    """Heat maps: specialised share per layer × label, one panel per family."""
    plt = _plt()
    fams = list(result["families"].items())
    fig, axes = plt.subplots(1, len(fams), figsize=(4.5 * len(fams), 4), squeeze=False)
    for ax, (f, fam) in zip(axes[0], fams):
        data = [[100 * v for v in row] for row in fam["specialisation"]["per_label"]]  # [layer][label]
        im = ax.imshow(list(map(list, zip(*data))), aspect="auto", cmap="viridis", vmin=0)
        ax.set(title=f"{f}: specialised neurons (%)", xlabel="layer")
        ax.set_yticks(range(len(fam["labels"])), fam["labels"], fontsize=7)
        fig.colorbar(im, ax=ax)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _write(result: dict, out: Path, name: str, markdown, plot) -> list[Path]:
    paths = [out / f"{name}.json", out / f"{name}.md"]
    write_text_atomic(paths[0], json.dumps(result, indent=1) + "\n")
    write_text_atomic(paths[1], markdown(result))
    return [*paths, plot(result, out / f"{name}.png")]


def write_modularity(result: dict, out: Path) -> list[Path]:
    """OUT/modularity.{json,md,png}."""
    return _write(result, out, "modularity", modularity_markdown, plot_modularity)


EMERGENCE_KEYS = (
    "param_ari",
    "param_overlap",
    "coact_ari",
    "neuron_spearman",
    "expert_spearman",
    "best_function_ari",
)


def emergence_markdown(result: dict) -> str:
    lines = [
        f"# Emergence over {len(result['steps'])} checkpoints of {result.get('run', 'the run')}",
        "",
        "Similarity of each checkpoint to the final one (partitions: ARI / overlap of MoEfication experts; "
        "neurons: Spearman of predictivity per label, ARI of best-function groups; experts: Spearman of "
        "experts' mean predictivity).",
        "",
        "| step | " + " | ".join(EMERGENCE_KEYS) + " | param ARI across seeds |",
        "| --- |" + " --- |" * (len(EMERGENCE_KEYS) + 1),
    ]
    modes = result.get("modes") or ["dense"] * len(result["steps"])
    for step, row, seed_ari, mode in zip(
        result["steps"], result["to_final"], result["param_seed_ari"], modes
    ):
        lines.append(
            f"| {step}{' (SSD sparse)' if mode == 'sparse' else ''} | "
            + " | ".join(f"{row[k]:.3f}" for k in EMERGENCE_KEYS)
            + f" | {seed_ari:.3f} |"
        )
    if "sparse" in modes:
        lines += [
            "",
            "SSD run: checkpoints marked (SSD sparse) were saved in a sparse phase; every checkpoint is read "
            "as its dense weights, neurons in their original order.",
        ]
    return "\n".join(lines) + "\n"


def plot_emergence(result: dict, path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    steps = result["steps"][:-1]
    for k in EMERGENCE_KEYS:
        ax.plot(steps, [r[k] for r in result["to_final"]], marker=".", label=k)
    ax.plot(result["steps"], result["param_seed_ari"], ls=":", color="gray", label="param ARI across seeds")
    ax.set(xlabel="step", ylabel="similarity to the final checkpoint", ylim=(-0.05, 1.05))
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_emergence(result: dict, out: Path) -> list[Path]:
    """OUT/emergence.{json,md,png}."""
    return _write(result, out, "emergence", emergence_markdown, plot_emergence)
