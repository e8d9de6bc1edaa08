"""MoE inference: MoEfy a dense checkpoint, save/load MoE checkpoints, perplexity against k/E.

An MoE checkpoint is a densa model folder whose FFN neurons are stored expert by expert (so it still
loads, and runs identically, as a dense model) plus two files:

    moe.json                  {format, num_experts, top_k, router, method, layouts}
    moe_router.safetensors    layers.{i}.ffn.router.* tensors

`layouts[i][j]` is the original index of the neuron now at position j of layer i.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from densa.errors import CheckpointError
from densa.models.checkpoint_io import (
    atomic_dir,
    build_transformer,
    is_densa_checkpoint,
    load_model_state,
    save_model,
)
from densa.models.config import ModelConfig
from densa.models.transformer import Transformer
from densa.sparse_moe.errors import MoEError, check_experts, check_top_k
from densa.sparse_moe.moe_ffn import MoEFeedForward
from densa.sparse_moe.moefication import Clustering, cluster_ffn
from densa.sparse_moe.router import build_router
from densa.sparse_moe.switching import ffn_modules, set_top_k, to_sparse

MOE_FORMAT = "densa-moe"
MOE_FILE = "moe.json"
ROUTER_FILE = "moe_router.safetensors"


def load_dense_state(path: str | os.PathLike) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """(config, state dict) of a densa model folder or an HF folder."""
    if is_densa_checkpoint(path):
        return load_model_state(path)
    from densa.models.hf.importer import is_hf_folder, load_hf_state

    if is_hf_folder(path):
        return load_hf_state(path)
    raise CheckpointError(f"{path}: neither a densa model folder nor an HF folder (no suitable config.json)")


def moefy(
    model: Transformer,
    num_experts: int,
    top_k: int,
    *,
    method: str = "kmeans",
    router: str = "centroid",
    seed: int = 0,
    iters: int = 50,
) -> list[torch.Tensor]:
    """Turn a dense model into an MoE in place; returns each layer's layout (original neuron order)."""
    ffns = ffn_modules(model)
    for ffn in ffns:
        check_experts(ffn.n_local_neurons, num_experts)
    check_top_k(top_k, num_experts)
    clusterings = [cluster_ffn(ffn, num_experts, method=method, seed=seed, iters=iters) for ffn in ffns]
    return to_sparse(model, clusterings, top_k, router=router)


def save_moe(
    path: str | os.PathLike,
    model: Transformer,
    layouts: Sequence[torch.Tensor],
    *,
    router: str = "centroid",
    method: str = "kmeans",
    overwrite: bool = False,
    add_files: Callable[[Path], None] | None = None,
) -> Path:
    """Write the MoE folder; `add_files(tmp)` may add files (e.g. the tokenizer) before it appears."""
    moes = [layer.ffn for layer in model.layers]
    if not all(isinstance(m, MoEFeedForward) for m in moes):
        raise MoEError("save_moe needs a model whose every layer is an MoEFeedForward (call moefy first)")
    state = {k: v for k, v in model.state_dict().items() if ".ffn.router." not in k}
    routers = {
        f"layers.{i}.ffn.router.{k}": v.detach().cpu().contiguous()
        for i, m in enumerate(moes)
        for k, v in m.router.state_dict().items()
    }
    meta = {
        "format": MOE_FORMAT,
        "num_experts": moes[0].num_experts,
        "top_k": moes[0].top_k,
        "router": router,
        "method": method,
        "layouts": [lay.tolist() for lay in layouts],
    }
    # One atomic folder: the model, routers and moe.json appear together or not at all.
    with atomic_dir(path, overwrite, kind=MOE_FORMAT) as tmp:
        save_model(tmp, model.config, state, overwrite=True)
        save_file(routers, tmp / ROUTER_FILE, metadata={"format": "pt"})
        (tmp / MOE_FILE).write_text(json.dumps(meta) + "\n", encoding="utf-8")
        if add_files is not None:
            add_files(tmp)
    return Path(path)


def is_moe_checkpoint(path: str | os.PathLike) -> bool:
    return (Path(path) / MOE_FILE).is_file() and is_densa_checkpoint(path)


def load_moe(
    path: str | os.PathLike,
    *,
    top_k: int | None = None,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
) -> Transformer:
    """An MoE Transformer (eval mode) from an MoE checkpoint; `top_k` overrides the saved k."""
    folder = Path(path)
    if not is_moe_checkpoint(folder):
        raise CheckpointError(f"{folder}: not an MoE checkpoint (no {MOE_FILE} next to a densa model folder)")
    meta = json.loads((folder / MOE_FILE).read_text(encoding="utf-8"))
    config, state = load_model_state(folder)
    model = build_transformer(config, state, dtype=dtype, device=device)
    num_experts = int(meta["num_experts"])
    size = check_experts(config.ffn_dim, num_experts)
    router_state = load_file(folder / ROUTER_FILE)
    clusterings, routers = [], []
    for i in range(config.n_layers):
        # Neurons are stored expert by expert already: the identity order, experts of `size` neurons.
        labels = torch.arange(config.ffn_dim) // size
        c = Clustering(
            labels, torch.zeros(num_experts, config.dim), math.nan, 1.0, meta.get("method", "kmeans")
        )
        router = build_router(meta["router"], c)
        prefix = f"layers.{i}.ffn.router."
        router.load_state_dict({k[len(prefix) :]: v for k, v in router_state.items() if k.startswith(prefix)})
        clusterings.append(c)
        routers.append(router.to(dtype))
    to_sparse(model, clusterings, top_k or int(meta["top_k"]), routers=routers)
    return model.to(device=device).eval()


def activated_params(model: Transformer) -> int:
    """Non-embedding parameters one token runs through (ModelConfig.num_params' count, without embeddings
    or output head, plus the routers): every MoE FFN's expert weights count for top_k of num_experts."""
    routers = sum(p.numel() for name, p in model.named_parameters() if ".router." in name)
    total = model.config.num_params(include_embeddings=False) + routers
    for ffn in ffn_modules(model):
        if isinstance(ffn, MoEFeedForward):
            projections = [getattr(ffn, n, None) for n in ("gate_up_proj", "up_proj", "down_proj")]
            experts = sum(m.weight.numel() for m in projections if m is not None)
            total -= experts - experts * ffn.top_k // ffn.num_experts
    return total


@torch.no_grad()
def perplexity(model: Transformer, sequences: Iterable[torch.Tensor]) -> float:
    """exp(mean next-token loss) over `sequences`, each [B, T+1] token ids."""
    total, count = 0.0, 0
    for seq in sequences:
        logits = model(seq[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1).float(), seq[:, 1:].flatten(), reduction="sum")
        total += float(loss)
        count += seq[:, 1:].numel()
    if count == 0:
        raise MoEError("perplexity needs at least one sequence of two or more tokens")
    return math.exp(total / count)


def perplexity_vs_top_k(
    model: Transformer, sequences: Sequence[torch.Tensor], top_ks: Iterable[int]
) -> dict[int, float]:
    """{k: perplexity} of an MoE model run at each k (k = E is the dense model exactly, up to fp32)."""
    moes = [layer.ffn for layer in model.layers if isinstance(layer.ffn, MoEFeedForward)]
    if not moes:
        raise MoEError("perplexity_vs_top_k needs an MoE model (moefy or load_moe first)")
    saved = moes[0].top_k
    results = {}
    try:
        for k in top_ks:
            set_top_k(model, k)
            results[k] = perplexity(model, sequences)
    finally:
        set_top_k(model, saved)
    return results
