"""Decoder models: config, layers, KV cache, hook points, HF interop (`densa.models.hf`).

Names are imported lazily so that `densa.models.config` (used by recipe validation) loads without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ModelConfig": "densa.models.config",
    "RopeScaling": "densa.models.config",
    "HookPoint": "densa.models.hooks",
    "capture": "densa.models.hooks",
    "KVCache": "densa.models.kv_cache",
    "causal_lm_loss": "densa.models.loss",
    "Transformer": "densa.models.transformer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'densa.models' has no attribute {name!r}")
