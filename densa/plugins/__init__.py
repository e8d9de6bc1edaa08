"""Knowledge plugins (map-tuning, Zhang et al. 2023): a knowledge base with TransE embeddings, a mapping
network into a frozen model's input space, and the `[E] / mention` rewrite that feeds the mapped vectors
through `inputs_embeds`; no weight of the model changes. See docs/plugins.md."""

from densa.plugins.errors import PluginError
from densa.plugins.inject import Encoded, encode_mentions, plugged_embeds, plugged_logits
from densa.plugins.io import load_embeddings, load_plugin, new_plugin, save_embeddings, save_plugin
from densa.plugins.kb import KnowledgeBase, kb_from_facts, read_kb
from densa.plugins.mapper import NO_ENTITY, UNKNOWN, KnowledgePlugin, model_fingerprint
from densa.plugins.transe import TransEConfig, train_transe

__all__ = [
    "NO_ENTITY",
    "UNKNOWN",
    "Encoded",
    "KnowledgeBase",
    "KnowledgePlugin",
    "PluginError",
    "TransEConfig",
    "encode_mentions",
    "kb_from_facts",
    "load_embeddings",
    "load_plugin",
    "model_fingerprint",
    "new_plugin",
    "plugged_embeds",
    "plugged_logits",
    "read_kb",
    "save_embeddings",
    "save_plugin",
    "train_transe",
]
