"""Map-tuning's settings: the `plugin:` recipe section is this one dataclass.

Torch-free on purpose: the recipe schema imports it. Rules that need the rest of the recipe
(init.from_path, data.tokenizer, parallel, other methods) are in `densa.config.checks`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from densa.errors import DensaError

PluginKind = Literal["general", "task"]
MapperChoice = Literal["affine", "mlp"]
MentionFormChoice = Literal["slash", "masked"]


@dataclass(frozen=True, kw_only=True)
class PluginConfig:
    """Map-tuning (docs/plugins.md): only a mapping network from a KB's entity embeddings into the input
    space of the model loaded from init.from_path trains; the model is frozen and does not change."""

    enabled: bool = False
    """Make this a map-tuning run (needs init.from_path and data.tokenizer; data.train is not read)."""
    kind: PluginKind = "general"
    """general: mention LM (see mention_form); task: downstream examples, the loss on the answer
    (task-specific map-tuning of a frozen downstream model)."""
    mention_form: MentionFormChoice = "masked"
    """How a mention reaches the model. masked: the [E] token alone, the name dropped; general map-tuning
    then puts the loss on the text after each masked mention, so the mapper learns to carry the entity's
    facts. slash: the paper's `[E] / name`; general map-tuning puts the loss on the name. Recorded in
    the mapper file; `densa plugin ask` rewrites prompts the same way. masked is what helps on entities
    the model has not read (docs/plugins.md)."""
    kb: str = ""
    """Knowledge-base file (triple and alias lines; `densa plugin kb` writes one from the fact table)."""
    embeddings: str = ""
    """Entity embeddings of that KB (`densa plugin embed` trains TransE and writes them)."""
    examples: str = ""
    """JSONL: general, {"text": "... [[mention]] ..."}; task, {"prompt": "... [[mention]] ...", "answer":
    "..."}. Empty for general: one statement `[[head]] relation [[tail]] .` per KB triple."""
    mapper: MapperChoice = "affine"
    """Mapping network: affine (the paper's one linear layer) or mlp (one hidden GELU layer)."""
    init_mapper: str | None = None
    """Start from this mapper file instead of a fresh one (task-specific map-tuning from a general mapper,
    as the paper does)."""
    out_file: str = "plugin.safetensors"
    """Mapper file written at the end of training, relative to run.out_dir."""

    def __post_init__(self) -> None:
        if self.enabled and not (self.kb and self.embeddings):
            raise DensaError("plugin.kb: plugin.enabled needs plugin.kb and plugin.embeddings")
        if self.kind == "task" and self.enabled and not self.examples:
            raise DensaError("plugin.examples: kind task needs a JSONL of {prompt, answer} examples")
