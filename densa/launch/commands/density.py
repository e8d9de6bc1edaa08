"""`densa density ...`: train the reference series, a model's density with an interval, the density law."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DEFAULT_REFERENCE = "runs/density/reference/reference.json"


def register(subparsers) -> None:
    density = subparsers.add_parser("density", help="capability density (Densing Law)")
    sub = density.add_subparsers(dest="density_command", metavar="SUBCOMMAND")
    density.set_defaults(handler=lambda args: (density.print_help(), 2)[1])

    t = sub.add_parser(
        "train-reference", help="prepare data, train (resumable) and score the reference series, fit it"
    )
    t.add_argument("series", nargs="?", default="recipes/density/series.yaml", help="series file")
    t.add_argument("--cache-dir", default=None, help="corpus/facts cache (default: $DENSA_CACHE)")
    t.set_defaults(handler=_train_reference)

    e = sub.add_parser("eval", help="density ρ = N̂/N of a run, checkpoint or HF folder, with an interval")
    e.add_argument(
        "model",
        help="run dir, RUN/checkpoints/step_N, densa model folder, MoE folder (densa moefy) or HF folder",
    )
    e.add_argument("--reference", default=DEFAULT_REFERENCE, help="reference.json of train-reference")
    e.add_argument("--tokenizer", default=None, help="default: the model's own")
    e.add_argument("--n-boot", type=int, default=200, help="bootstrap replicates")
    e.add_argument(
        "--params", type=float, default=None,
        help="N to divide by (default: non-embedding count; for an MoE folder, the parameters a token uses)",
    )  # fmt: skip
    e.add_argument(
        "--via", choices=["score", "loss"], default="score",
        help="invert the score through the sigmoid (the paper), or the conditional loss directly",
    )  # fmt: skip
    e.set_defaults(handler=_eval)

    law = sub.add_parser("law", help="fit ln ρ_max = A·t + B over dated models; doubling time ln2/A")
    law.add_argument("--table", required=True, help="CSV with columns name, date (YYYY-MM-DD), density")
    law.add_argument("--plot", default=None, help="write a PNG of ln ρ over time with the fitted line")
    law.set_defaults(handler=_law)


def _train_reference(args: argparse.Namespace) -> int:
    from densa.launch.density_series import train_reference

    print(train_reference(args.series, args.cache_dir))
    return 0


def evaluate(model_path: str, reference: str, tokenizer: str | None = None, **kw) -> dict:
    """Score a model on the reference's tasks and estimate its density (the tokenizers must match)."""
    from densa.data.tokenizer import load_tokenizer
    from densa.density import DensityError, Reference, estimate_density, load_suite, score_suite
    from densa.train.finetune import find_tokenizer, load_model

    data = json.loads(Path(reference).read_text(encoding="utf-8"))
    tok_path = tokenizer or find_tokenizer(model_path)
    if tok_path is None:
        raise DensityError(f"{model_path}: no tokenizer found; pass --tokenizer")
    tok = load_tokenizer(tok_path)
    want = data["tokenizer_fingerprint"]
    if tok.fingerprint != want:
        raise DensityError(
            f"{model_path}: its tokenizer ({tok_path}, fingerprint {tok.fingerprint[:12]}) differs from "
            f"the one the reference series and its tasks were scored with ({want[:12]}): "
            "per-token conditional losses are not comparable"
        )
    from densa.sparse_moe.inference import activated_params, is_moe_checkpoint, load_moe

    moe = is_moe_checkpoint(model_path)
    model = load_moe(model_path) if moe else load_model(model_path)  # an MoE folder runs its top-k
    scored = score_suite(model, tok.encode, load_suite(data["tasks_dir"]), max_len=model.config.max_seq_len)
    n = kw.pop("params", None) or (activated_params(model) if moe else model.config.num_params(False))
    found = estimate_density(Reference.from_dict(data), n, scored.loss, scored.score, **kw)
    return {"model": str(model_path), **found.to_dict(), "tasks": scored.tasks}


def _eval(args: argparse.Namespace) -> int:
    out = evaluate(
        args.model, args.reference, args.tokenizer, n_boot=args.n_boot, params=args.params, via=args.via
    )
    lo, hi = out["rho_interval"]
    print(f"ρ = {out['rho']:.3f} [{lo:.3f}, {hi:.3f}] (N̂ = {out['n_hat']:.4g}, N = {out['n_params']:.4g})")
    print(json.dumps(out))
    return 0


def _law(args: argparse.Namespace) -> int:
    from densa.density import fit_density_law, read_models_csv

    law = fit_density_law(read_models_csv(args.table))
    print(f"ln ρ_max = {law.a:.5f}·t + {law.b:.4f} (t in days since 2023-02-24), R² = {law.r2:.3f}")
    print(f"doubling time ln2/A = {law.doubling_days:.1f} days ({law.doubling_days / 30.44:.2f} months)")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import numpy as np

        t = np.array(law.days)
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.scatter(t, np.log(law.rho), c=["tab:red" if f else "tab:gray" for f in law.frontier], s=18)
        ax.plot(t, law.a * t + law.b, "k--", label=f"A = {law.a:.4f}/day, T₂ = {law.doubling_days:.0f} d")
        ax.set(xlabel="days since 2023-02-24", ylabel="ln ρ", title="density law (red: frontier)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0
