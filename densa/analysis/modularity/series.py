"""A run's checkpoints as dense models with every neuron at its original index, for emergence.

SSD (`densa.sparse_moe.ssd`) permutes each FFN's neurons expert by expert when it switches to sparse and
keeps that order after merging back, so neuron i of one checkpoint is not neuron i of another. Its
callback state (`callbacks.pt`, key "ssd") holds each layer's cumulative layout (layout[i] = original
index of the neuron now at position i); `original_order_` undoes it, so per-neuron comparisons across
checkpoints (predictivity Spearman, partition ARI) compare the same neurons. A checkpoint saved in a
sparse phase holds the dense weights (no routers); the analysis reads them as the dense model.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from densa.analysis.errors import AnalysisError
from densa.analysis.modularity.activations import ffn_modules


@dataclass(frozen=True)
class SeriesCheckpoint:
    step: int
    path: Path
    mode: str
    """"dense", or "sparse" when SSD was in a sparse phase at this checkpoint (the next steps are sparse)."""
    sparse_steps: int
    """Optimizer steps trained in sparse mode up to this checkpoint."""
    layouts: list[torch.Tensor] | None
    """SSD's cumulative neuron layout per layer; None for a run without SSD."""


def ssd_state(folder: str | os.PathLike) -> dict | None:
    """The SSD callback's saved state of a checkpoint folder, or None (no SSD in the run)."""
    from densa.train import safe_load
    from densa.train.checkpoint import CALLBACKS_FILE

    path = Path(folder) / CALLBACKS_FILE
    if not path.is_file():
        return None
    return safe_load.load(path).get("ssd")


def original_order_(model: nn.Module, layouts: list[torch.Tensor]) -> nn.Module:
    """Permute every dense FFN in place so the neuron at index i is the run's original neuron i."""
    from densa.sparse_moe.switching import permute_ffn_

    ffns = ffn_modules(model)
    if len(layouts) != len(ffns):
        raise AnalysisError(f"SSD state has {len(layouts)} layouts for a model with {len(ffns)} FFN layers")
    with torch.no_grad():
        for ffn, layout in zip(ffns, layouts, strict=True):
            permute_ffn_(ffn, torch.argsort(layout))
    return model


def series_checkpoints(run_dir: str | os.PathLike) -> list[SeriesCheckpoint]:
    """Every complete checkpoint of a run, oldest first, with its SSD mode and layouts (if any)."""
    from densa.train.checkpoint import complete_checkpoints

    out = []
    for step, path in complete_checkpoints(run_dir):
        state = ssd_state(path)
        out.append(
            SeriesCheckpoint(
                step=step,
                path=path,
                mode=state["mode"] if state else "dense",
                sparse_steps=int(state["sparse_steps_done"]) if state else 0,
                layouts=[t.long() for t in state["layouts"]] if state else None,
            )
        )
    return out


def series_models(ckpts: list[SeriesCheckpoint], model_cfg: object) -> Iterator[tuple[int, nn.Module]]:
    """(step, dense model in original neuron order) for each checkpoint, built one at a time."""
    from densa.models.checkpoint_io import build_transformer
    from densa.train.checkpoint import checkpoint_weights

    for c in ckpts:
        model = build_transformer(model_cfg, checkpoint_weights(c.path))
        if c.layouts is not None:
            original_order_(model, c.layouts)
        yield c.step, model
