"""Plugin files: entity embeddings (tied to a KB) and mappers (tied to a model, a KB and its embeddings),
each one small safetensors file whose header records the fingerprints that `load_*` checks."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from densa.models.tagged_safetensors import read_tagged_metadata, write_tagged
from densa.plugins.errors import PluginError
from densa.plugins.kb import KnowledgeBase
from densa.plugins.mapper import KnowledgePlugin, check_fits, embeddings_fingerprint, model_fingerprint

EMBEDDINGS_FORMAT = "densa-kb-embeddings"
MAPPER_FORMAT = "densa-knowledge-plugin"
FORMAT_VERSION = 1


def save_embeddings(path: str | os.PathLike, kb: KnowledgeBase, embeddings: torch.Tensor) -> Path:
    if embeddings.shape[0] != len(kb.entities):
        raise PluginError(f"{embeddings.shape[0]} embedding rows for a KB of {len(kb.entities)} entities")
    meta = {"format": EMBEDDINGS_FORMAT, "format_version": FORMAT_VERSION, "kb_fingerprint": kb.fingerprint()}
    return write_tagged(path, {"entity": embeddings.detach().float().contiguous().cpu()}, meta)


def load_embeddings(path: str | os.PathLike, kb: KnowledgeBase) -> torch.Tensor:
    """The entity table in `path`; PluginError unless it was trained on `kb`."""
    meta = read_tagged_metadata(path, EMBEDDINGS_FORMAT, "KB-embedding", PluginError)
    if meta.get("kb_fingerprint") != kb.fingerprint():
        raise PluginError(
            f"{path}: embeddings of another knowledge base: kb_fingerprint {meta.get('kb_fingerprint')}"
            f" != this KB's {kb.fingerprint()}"
        )
    return load_file(str(path))["entity"]


def new_plugin(
    model: nn.Module,
    kb: KnowledgeBase,
    embeddings: torch.Tensor,
    kind: str = "affine",
    seed: int = 0,
    mention_form: str = "slash",
) -> KnowledgePlugin:
    """A fresh (seeded) mapper from `embeddings` into `model`'s input-embedding space, for inputs whose
    mentions are rewritten in `mention_form` (densa.plugins.inject)."""
    from densa.plugins.mapper import input_embedding

    torch.manual_seed(seed)
    dim = input_embedding(model).weight.shape[1]
    return KnowledgePlugin(
        embeddings,
        dim,
        kind=kind,  # type: ignore[arg-type]
        kb_fingerprint=kb.fingerprint(),
        model_fp=model_fingerprint(model),
        mention_form=mention_form,
    )


def save_plugin(path: str | os.PathLike, plugin: KnowledgePlugin) -> Path:
    """The mapper's weights (not the embeddings: they have their own file) and its fingerprints."""
    tensors = {k: v.detach().float().contiguous().cpu() for k, v in plugin.mapper.state_dict().items()}
    meta = {"format": MAPPER_FORMAT, "format_version": FORMAT_VERSION, **plugin.metadata()}
    return write_tagged(path, tensors, meta)


def load_plugin(
    path: str | os.PathLike, model: nn.Module, kb: KnowledgeBase, embeddings: torch.Tensor
) -> KnowledgePlugin:
    """The mapper in `path` over `embeddings`; PluginError naming the mismatch when it was trained for
    another model architecture, KB or embedding table."""
    meta = read_tagged_metadata(path, MAPPER_FORMAT, "knowledge-plugin", PluginError)
    check_fits(
        meta,
        model_fingerprint(model),
        kb.fingerprint(),
        embeddings_fingerprint(embeddings),
        what=f"the plugin in {Path(path).name}",
    )
    plugin = KnowledgePlugin(
        embeddings,
        int(meta["model_dim"]),
        kind=meta["kind"],
        kb_fingerprint=meta["kb_fingerprint"],
        model_fp=meta["model_fingerprint"],
        mention_form=meta.get("mention_form", "slash"),  # files written before the key existed
    )
    try:
        plugin.mapper.load_state_dict(load_file(str(path)), strict=True)
    except RuntimeError as err:
        raise PluginError(f"{path}: weights do not fit a {meta['kind']} mapper: {err}") from None
    return plugin
