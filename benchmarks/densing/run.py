"""Densing Law at toy scale: densities of models against densa's reference series (recipes/density/).

Needs `densa density train-reference` first (runs/density/reference/reference.json). Every model here is
trained on the series' data mixture with the series' WSD recipe, at D0 tokens unless said otherwise:

- calibration: reference-recipe models held out of every fit (a size not in the series, and series sizes at
  D0 tokens) — their ρ should be ≈ 1;
- longer-trained: the smallest size at 2·D0 tokens;
- better data mix: ref_s1 at D0 with 90% facts/reasoning text instead of 70%;
- ReLU² vs SwiGLU: ref_s1's shape with a plain ReLU² FFN (d_ffn 1.5× for parameter parity) vs the SwiGLU
  reference run ref_s1_x20, both on 20·N tokens;
- magnitude pruning: 50% of every non-embedding matrix of the SwiGLU ref_s1@D0 zeroed, with and without
  retraining (D0/4 tokens, masks kept); N counts the non-zero non-embedding weights.

    python benchmarks/densing/run.py train     # train the models (resumable; ~20 min on one free core)
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

from densa.launch.density_series import load_series, run_config, train_run  # noqa: E402
from densa.train.callbacks import Callback  # noqa: E402

NAME = "densing"
SERIES = "recipes/density/series.yaml"
OUT = "runs/density/bench"
REFERENCE = "runs/density/reference/reference.json"
DATA = "runs/density/data"
RELU2 = ("model.activation=relu2", "model.gated=false", "model.ffn_dim=120")
MIX90 = (
    f"data.train=[{{path: {DATA}/synthetic_train, weight: 0.9}}, "
    f"{{path: {DATA}/shakespeare_train, weight: 0.1}}]",
)
PRUNE = 0.5
PARENT = "ref_s1@D0"


def models(d0: int) -> dict[str, dict[str, Any]]:
    """name → recipe, token count, overrides, group (in training order: the cheapest, most telling first)."""
    return {
        "ref_s1@D0": {"recipe": "ref_s1.yaml", "tokens": d0, "group": "calibration; SwiGLU; pruning parent"},
        "relu2_s1_x20": {
            "recipe": "ref_s1.yaml",
            "tokens": 20 * 21664,
            "group": "ReLU² (vs SwiGLU ref_s1_x20, equal tokens)",
            "sets": RELU2,
        },
        "ref_d48L2@D0": {
            "recipe": "ref_s2.yaml",
            "tokens": d0,
            "group": "calibration (size not in the series)",
            "sets": ("model.n_layers=2",),
        },  # fmt: skip
        "mix90_s1@D0": {"recipe": "ref_s1.yaml", "tokens": d0, "group": "better data mix", "sets": MIX90},
        "ref_s1@2D0": {"recipe": "ref_s1.yaml", "tokens": 2 * d0, "group": "longer-trained"},
        "ref_s2@D0": {"recipe": "ref_s2.yaml", "tokens": d0, "group": "calibration"},
    }


def run_dir(name: str) -> str:
    return f"{OUT}/{name.replace('@', '_at_')}"


def cfg_of(series: Any, name: str, spec: dict[str, Any]) -> Any:
    return run_config(series, spec["recipe"], 0, run_dir(name), spec.get("sets", ()), spec["tokens"])


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


def pruned(series: Any) -> tuple[Path, dict[str, torch.Tensor]]:
    """The parent with 50% of each non-embedding matrix zeroed by magnitude (saved once), and its masks."""
    from densa.models.checkpoint_io import save_transformer
    from densa.train.finetune import load_model

    parent = cfg_of(series, PARENT, models(int(series.d0))[PARENT])
    model = load_model(train_run(parent))
    masks = magnitude_prune(model, PRUNE)
    folder = Path(OUT, "pruned_s1")
    if not folder.exists():
        save_transformer(folder, model)
    return folder, masks


def retrained_cfg(series: Any, folder: Path) -> Any:
    sets = (f"init.from_path={folder}",)
    return run_config(series, "ref_s1.yaml", 0, f"{OUT}/pruned_s1_retrained", sets, int(series.d0) // 4)


def train_all(series: Any, only: list[str] | None = None) -> None:
    """Train every model (or those in `only`; "pruned" names the pruning + retraining step) in order."""
    for i, (name, spec) in enumerate(models(int(series.d0)).items()):
        if only is None or name in only:
            train_run(cfg_of(series, name, spec))
        if (only is None and i == 1) or (only and "pruned" in only and name == PARENT):
            folder, masks = pruned(series)  # pruning, then retraining with the masks kept
            train_run(retrained_cfg(series, folder), callbacks=(KeepMasks(masks),))


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
