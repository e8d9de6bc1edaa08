"""Densing Law at toy scale: densities of models against densa's reference series (recipes/density/).

Needs `densa density train-reference` first (runs/density/reference/reference.json). Every model here is
trained on the series' data mixture with the series' WSD recipe, at D0 tokens unless said otherwise. The
series' own ref_s1 run at D0 (SwiGLU, 22k non-embedding parameters) is the parent of the variants:

- calibration: the series' interior sizes held out of the fit in turn (leave one size out; report.py),
  and reference-recipe models of shapes off the series' width/depth progression (d 48 with 2 and 4 layers,
  between the series' sizes), at D0 — their ρ should be ≈ 1;
- noise: the parent's recipe with two other seeds, whose spread of ρ is the margin a "denser" needs;
- longer-trained: the held-out d48L2 size at 2·D0 tokens;
- better data mix: ref_s1 at D0 with 90% facts/reasoning text instead of 70%;
- ReLU² vs SwiGLU: ref_s1's shape with a plain ReLU² FFN (d_ffn 1.5× for parameter parity), equal tokens;
- SSD: ref_s1's shape with a ReGLU FFN trained with SSD (8 experts, top-2) against the same ReGLU model
  trained densely;
- MoEfied at k/E = 1/4: both ReGLU models split into 8 experts (k-means) and run at top-2; N counts the
  parameters a token activates (attention, routers and 2 of 8 experts);
- ProSparse: the parent finetuned for D0/4 tokens with ReGLU and a progressive L1 penalty;
- magnitude pruning: 50% of every non-embedding matrix of the parent zeroed, with and without retraining
  (D0/4 tokens, masks kept); N counts the non-zero non-embedding weights;
- the control for the two D0/4 continuations: the parent itself trained on D0/4 more tokens.

    python benchmarks/densing/run.py train     # train the models (resumable; ~15 min on one free core)
    python benchmarks/densing/run.py report    # score, estimate densities, write results + plots

Writes benchmarks/results/densing.{json,md} and benchmarks/results/densing/*.png.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from densa.launch.density_series import Budget, load_series, run_config, train_run  # noqa: E402
from densa.train.callbacks import Callback  # noqa: E402

NAME = "densing"
SERIES = "recipes/density/series.yaml"
OUT = "runs/density/bench"
REFERENCE = "runs/density/reference/reference.json"
DATA = "runs/density/data"
RELU2 = ("model.activation=relu2", "model.gated=false", "model.ffn_dim=120")
REGLU = ("model.activation=relu",)
SSD = (
    *REGLU,
    "ssd.enabled=true",
    "ssd.num_experts=8",
    "ssd.top_k=2",
    "ssd.interval=10",
    "ssd.stability_metric=ari",
    "ssd.stability_threshold=0.9",
    "ssd.sparse_steps=20",
    "ssd.final_dense_fraction=0.2",
    "ssd.router_lr=1e-3",
)
MIX90 = (
    f"data.train=[{{path: {DATA}/synthetic_train, weight: 0.9}}, "
    f"{{path: {DATA}/shakespeare_train, weight: 0.1}}]",
)
PRUNE = 0.5
EXPERTS, TOP_K = 8, 2
PARENT = "ref_s1@D0"
MOEFIED = {"moefied_reglu_s1@D0": "reglu_s1@D0", "moefied_ssd_s1@D0": "ssd_s1@D0"}


def models(d0: int) -> dict[str, dict[str, Any]]:
    """name → recipe, token count, overrides, group (in training order: the cheapest, most telling first).
    `series: True` names a run of the reference series itself (trained by train-reference)."""
    s1, s2 = "ref_s1.yaml", "ref_s2.yaml"
    l2, l4 = ("model.n_layers=2",), ("model.n_layers=4",)

    def spec(recipe: str, tokens: int, group: str, sets: tuple[str, ...] = (), **kw: Any) -> dict[str, Any]:
        return {"recipe": recipe, "tokens": tokens, "group": group, "sets": sets, **kw}

    return {
        PARENT: spec(s1, d0, "series run (in the fit): SwiGLU parent", series=True),
        "ref_s1@D0_seed1": spec(s1, d0, "seed replica of the parent (noise)", ("run.seed=1",)),
        "ref_s1@D0_seed2": spec(s1, d0, "seed replica of the parent (noise)", ("run.seed=2",)),
        "ref_d48L2@D0": spec(s2, d0, "calibration (size not in the series)", l2),
        "ref_d48L4@D0": spec(s2, d0, "calibration (size not in the series)", l4),
        "relu2_s1@D0": spec(s1, d0, "ReLU² (vs SwiGLU parent, equal tokens)", RELU2),
        "mix90_s1@D0": spec(s1, d0, "better data mix", MIX90),
        "reglu_s1@D0": spec(s1, d0, "ReGLU, dense training", REGLU),
        "ssd_s1@D0": spec(s1, d0, "ReGLU, SSD training (8 experts, top-2)", SSD),
        "ref_d48L2@2D0": spec(s2, 2 * d0, "longer-trained (2·D0)", l2),
    }


def cfg_of(series: Any, name: str, spec: dict[str, Any]) -> Any:
    budget = Budget(tokens=spec["tokens"])
    if spec.get("series"):
        return run_config(series, spec["recipe"], budget)
    return run_config(series, spec["recipe"], budget, run_dir(name), spec.get("sets", ()))


def run_dir(name: str) -> str:
    return f"{OUT}/{name.replace('@', '_at_')}"


class KeepMasks(Callback):
    """Zero the pruned weights again after every optimizer step (retraining keeps the sparsity)."""

    def __init__(self, masks: dict[str, torch.Tensor]) -> None:
        self.masks = masks

    def post_step(self, trainer: Any, step: int, metrics: dict[str, Any]) -> None:
        with torch.no_grad():
            for name, p in trainer.model.named_parameters():
                if name in self.masks:
                    p.mul_(self.masks[name])


def magnitude_prune(model: torch.nn.Module, fraction: float) -> dict[str, torch.Tensor]:
    """Zero the `fraction` smallest-|w| entries of every 2-D non-embedding weight; returns the masks."""
    masks = {}
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2 and "embed" not in name:
                k = int(fraction * p.numel())
                threshold = p.abs().flatten().kthvalue(k).values
                masks[name] = (p.abs() > threshold).float()
                p.mul_(masks[name])
    return masks


def parent_checkpoint(series: Any) -> Path:
    """The series' own ref_s1 run at D0 (trained by train-reference; trained here if it is missing)."""
    return train_run(cfg_of(series, PARENT, models(int(series.d0))[PARENT]))


def pruned(series: Any) -> tuple[Path, dict[str, torch.Tensor]]:
    """The parent with 50% of each non-embedding matrix zeroed by magnitude (saved once), and its masks."""
    from densa.models.checkpoint_io import save_transformer
    from densa.train.finetune import load_model

    model = load_model(parent_checkpoint(series))
    masks = magnitude_prune(model, PRUNE)
    folder = Path(OUT, "pruned_s1")
    if not folder.exists():
        save_transformer(folder, model)
    return folder, masks


def finetune_cfg(series: Any, name: str, sets: tuple[str, ...]) -> Any:
    """A D0/4-token continuation of ref_s1's recipe (init.from_path in `sets`) into OUT/name."""
    return run_config(series, "ref_s1.yaml", Budget(tokens=int(series.d0) // 4), run_dir(name), sets)


def retrained_cfg(series: Any, folder: Path) -> Any:
    return finetune_cfg(series, "pruned50_s1_retrained", (f"init.from_path={folder}",))


def continued_cfg(series: Any) -> Any:
    """The control for the D0/4 continuations: the parent trained on D0/4 more tokens, unchanged."""
    return finetune_cfg(series, "ref_s1_continued", (f"init.from_path={parent_checkpoint(series)}",))


def prosparse_cfg(series: Any) -> Any:
    """ProSparse on the parent: ReGLU, progressive L1 on the FFN activations (docs/sparsity.md)."""
    sets = (
        f"init.from_path={parent_checkpoint(series)}",
        "sparsity.prosparse.enabled=true",
        "sparsity.prosparse.activation=relu",
        "sparsity.prosparse.l1_stages=[[30, 0.02], [80, 0.1]]",
    )
    return finetune_cfg(series, "prosparse_s1", sets)


def moefied(series: Any, name: str) -> Path:
    """MOEFIED[name]'s final model split into EXPERTS k-means experts, run at top-TOP_K (saved once)."""
    from densa.sparse_moe.inference import moefy, save_moe
    from densa.train.finetune import load_model

    folder = Path(run_dir(name))
    if not folder.exists():
        source = MOEFIED[name]
        model = load_model(train_run(cfg_of(series, source, models(int(series.d0))[source])))
        layouts = moefy(model, EXPERTS, TOP_K)
        save_moe(folder, model, layouts)
    return folder


def train_all(series: Any, only: list[str] | None = None) -> None:
    """Train every model (or those in `only`; "pruned", "prosparse", "continued" and "moefied" name the
    derived models), then prune/retrain, ProSparse-finetune, continue the parent and MoEfy."""
    for name, spec in models(int(series.d0)).items():
        if (only is None or name in only) and not spec.get("series"):
            train_run(cfg_of(series, name, spec))
    if only is None or "pruned" in only:
        folder, masks = pruned(series)  # pruning, then retraining with the masks kept
        train_run(retrained_cfg(series, folder), callbacks=(KeepMasks(masks),))
    if only is None or "prosparse" in only:
        train_run(prosparse_cfg(series))
    if only is None or "continued" in only:
        train_run(continued_cfg(series))
    if only is None or "moefied" in only:
        for name in MOEFIED:
            moefied(series, name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("phase", choices=["train", "report"])
    parser.add_argument("--only", nargs="+", default=None, help="train these models only (and/or 'pruned')")
    args = parser.parse_args()
    series = load_series(SERIES)
    if args.phase == "train":
        train_all(series, args.only)
        return 0
    from benchmarks.densing.report import report

    report(series)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
