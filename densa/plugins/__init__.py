"""Knowledge plugins (map-tuning, Zhang et al. 2023): a knowledge base with TransE embeddings, a mapping
network into a frozen model's input space, and the `[E] / mention` rewrite that feeds the mapped vectors
through `inputs_embeds`; no weight of the model changes. See docs/plugins.md.

Names are loaded on first use (PEP 562): `densa.plugins.config` (the `plugin:` recipe section, which the
recipe schema imports) must not pull in torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "PluginConfig": "config",
    "PluginError": "errors",
    "Encoded": "inject",
    "encode_mentions": "inject",
    "plugged_embeds": "inject",
    "plugged_logits": "inject",
    "load_embeddings": "io",
    "load_plugin": "io",
    "new_plugin": "io",
    "save_embeddings": "io",
    "save_plugin": "io",
    "KnowledgeBase": "kb",
    "kb_from_facts": "kb",
    "read_kb": "kb",
    "NO_ENTITY": "mapper",
    "UNKNOWN": "mapper",
    "KnowledgePlugin": "mapper",
    "model_fingerprint": "mapper",
    "map_tune": "training",
    "plugin_loss": "training",
    "TransEConfig": "transe",
    "train_transe": "transe",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'densa.plugins' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"densa.plugins.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])
