"""Save and load per-layer neuron predictors apart from the model: one safetensors file whose header holds
the shapes they were trained for, the layer thresholds that defined "active" and the held-out metrics."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file

from densa.models.tagged_safetensors import read_tagged_metadata, write_tagged
from densa.sparsity.errors import SparsityError
from densa.sparsity.layers import ffn_layers
from densa.sparsity.predictor import LowRankPredictor, PredictorMetrics

FORMAT = "densa-ffn-predictors"
FORMAT_VERSION = 1


def save_predictors(
    path: str | os.PathLike,
    predictors: Sequence[LowRankPredictor],
    *,
    layer_thresholds: Sequence[float] | None = None,
    metrics: Sequence[PredictorMetrics] = (),
) -> Path:
    """Write one predictor per layer to `path` (.safetensors), atomically (temp file, then rename)."""
    if not predictors:
        raise SparsityError("save_predictors: no predictors given")
    first = predictors[0]
    tensors = {
        f"layers.{j}.{k}": v.detach().to("cpu", torch.float32).clone()  # clone: one layer's module may repeat
        for j, p in enumerate(predictors)
        for k, v in p.state_dict().items()
    }
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "n_layers": len(predictors),
        "dim": first.down.in_features,
        "ffn_dim": first.up.out_features,
        "rank": first.down.out_features,
        "layer_thresholds": None if layer_thresholds is None else [float(t) for t in layer_thresholds],
        "metrics": [m.to_dict() for m in metrics],
    }
    return write_tagged(path, tensors, meta)


def read_predictors_metadata(path: str | os.PathLike) -> dict[str, object]:
    return read_tagged_metadata(path, FORMAT, "predictors", SparsityError)


def load_predictors(path: str | os.PathLike, model: torch.nn.Module | None = None) -> list[LowRankPredictor]:
    """Predictors from `path`; with `model`, checked against its FFN shapes and moved to its device/dtype."""
    meta = read_predictors_metadata(path)
    n_layers, dim, ffn_dim, rank = (int(meta[k]) for k in ("n_layers", "dim", "ffn_dim", "rank"))
    if model is not None:
        layers = ffn_layers(model)
        have = (len(layers), *layers[0].down_weight.shape) if layers else (0, 0, 0)
        if have != (n_layers, dim, ffn_dim):
            raise SparsityError(
                f"{path}: predictors were trained for n_layers={n_layers}, dim={dim}, ffn_dim={ffn_dim}; "
                f"this model has n_layers={have[0]}, dim={have[1]}, ffn_dim={have[2]}"
            )
    state = load_file(str(path))
    predictors = []
    for j in range(n_layers):
        predictor = LowRankPredictor(dim, ffn_dim, rank)
        try:
            predictor.load_state_dict({k: state[f"layers.{j}.{k}"] for k in ("down.weight", "up.weight")})
        except (KeyError, RuntimeError) as err:
            raise SparsityError(f"{path}: layer {j} does not fit a rank-{rank} predictor: {err}") from None
        predictors.append(predictor.eval())
    if model is not None:
        ref = next(model.parameters())
        predictors = [p.to(device=ref.device, dtype=ref.dtype) for p in predictors]
    return predictors
