"""densa -> HF folder that `transformers.AutoModelForCausalLM.from_pretrained` loads.

Gated-FFN models become Llama (or Qwen2 when they came from Qwen2). Variants HF has no class for
(plain FFN) get a small modeling file written next to the weights, loadable with trust_remote_code=True.
Tied embeddings are written once, as `model.embed_tokens.weight`, never as a second `lm_head` entry.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from importlib import resources
from pathlib import Path

import torch

from densa.models.checkpoint_io import atomic_dir, copy_files
from densa.models.config import ModelConfig
from densa.models.hf.config_map import TOKEN_ID_KEYS, config_to_hf, hf_flavour
from densa.models.hf.files import parse_size, save_safetensors, write_json
from densa.models.hf.mapping import densa_to_hf
from densa.models.transformer import Transformer

log = logging.getLogger(__name__)

REMOTE_CODE_FILES = ("configuration_densa.py", "modeling_densa.py")


def _dtype_name(state: dict[str, torch.Tensor]) -> str:
    floating = [t.dtype for t in state.values() if t.is_floating_point()]
    return str(floating[0] if floating else torch.float32).removeprefix("torch.")


def save_hf(
    path: str | os.PathLike,
    config: ModelConfig,
    state_dict: dict[str, torch.Tensor],
    *,
    dtype: torch.dtype | None = None,
    max_shard_size: int | str = "5GB",
    overwrite: bool = False,
    extra_files: Iterable[str | os.PathLike] = (),
) -> Path:
    """Write an HF folder (config.json, generation_config.json, safetensors) for a densa state dict."""
    flavour = hf_flavour(config)
    # Llama-style attention_bias also creates an o_proj bias, written as zeros.
    hf_state = densa_to_hf(state_dict, config, o_proj_bias=flavour != "qwen2")
    if dtype is not None:
        hf_state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in hf_state.items()}
    hf_config = config_to_hf(config, _dtype_name(hf_state))
    # The source's generation config as it was (an instruct model's eos may be a list of end tokens);
    # token ids it lacks come from config.json's, so `generate` knows where to stop.
    ids = {k: config.extra[k] for k in TOKEN_ID_KEYS if config.extra.get(k) is not None}
    source = config.extra.get("hf_generation_config") or {}
    generation = {**ids, **{k: v for k, v in source.items() if v is not None or k not in TOKEN_ID_KEYS}}
    with atomic_dir(path, overwrite, kind="hf") as tmp:
        save_safetensors(hf_state, tmp, parse_size(max_shard_size))
        write_json(tmp / "config.json", hf_config)
        write_json(tmp / "generation_config.json", generation)
        copy_files(extra_files, tmp)
        if flavour == "densa":
            code = resources.files("densa.models.hf").joinpath("remote_code")
            for name in REMOTE_CODE_FILES:
                (tmp / name).write_text(code.joinpath(name).read_text(encoding="utf-8"), encoding="utf-8")
    if flavour == "densa":
        log.warning(
            "%s: HF has no class for a %s FFN; wrote modeling_densa.py, load with trust_remote_code=True",
            path,
            config.ffn_name
            + (f" with FATReLU T={config.activation_threshold}" if config.activation_threshold else ""),
        )
    else:
        log.info("%s: exported as %s", path, hf_config["architectures"][0])
    return Path(path)


def export_hf(path: str | os.PathLike, model: Transformer, **kwargs) -> Path:
    """`save_hf` for a Transformer (tensor-parallel models must be gathered first)."""
    if model.tp_size != 1:
        raise ValueError("export_hf needs a tp_size=1 model; gather tensor-parallel shards first")
    return save_hf(path, model.config, model.state_dict(), **kwargs)
