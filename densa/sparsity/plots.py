"""PNG plots of a `SparsityReport`: sparsity per layer, and perplexity against sparsity over CETT targets."""

from __future__ import annotations

from pathlib import Path

from densa.sparsity.report import SparsityReport


def write_plots(report: SparsityReport, out_dir: str | Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar([x.layer for x in report.layers], [100 * x.sparsity for x in report.layers], color="tab:blue")
    ax.axhline(100 * report.sparsity, color="k", ls="--", lw=1, label=f"mean {100 * report.sparsity:.1f}%")
    ax.set(
        xlabel="layer", ylabel="sparsity (%)", title=f"PPL-{report.p:g}% sparsity per layer", ylim=(0, 100)
    )
    ax.legend(loc="lower right")
    fig.tight_layout()
    paths.append(out / "sparsity_per_layer.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    pts = sorted(report.curve, key=lambda pt: pt.sparsity)
    ax.plot([100 * pt.sparsity for pt in pts], [pt.ppl for pt in pts], "o-", label="CETT threshold")
    for b in report.baselines:
        bp = sorted(b.curve, key=lambda pt: pt.sparsity)
        ax.plot([100 * pt.sparsity for pt in bp], [pt.ppl for pt in bp], ".--", label=b.method)
    ax.axhline(report.ppl_dense, color="gray", lw=1, label="dense")
    ax.axhline(report.ppl_dense * (1 + report.p / 100), color="r", ls=":", lw=1, label=f"+{report.p:g}%")
    ax.scatter([100 * report.sparsity], [report.ppl_sparse], color="r", zorder=3)
    top = max([pt.ppl for pt in pts] + [report.ppl_sparse])
    ax.set(
        xlabel="sparsity (%)",
        ylabel="perplexity",
        title="perplexity vs sparsity",
        ylim=(report.ppl_dense * 0.98, min(top, report.ppl_dense * (1 + 5 * report.p / 100)) * 1.02),
    )
    ax.legend()
    fig.tight_layout()
    paths.append(out / "ppl_vs_sparsity.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    return paths
