"""The `[E] / mention` input rewrite and the forward pass with mapped vectors as input embeddings.

Text marks mentions as `[[surface]]` (linked through the KB's aliases) or `[[surface|Entity]]` (linked
explicitly). `encode_mentions` rewrites each mention as `[E] / surface`: the `[E]` position carries a
placeholder token id and the entity's index in `entity_ids`; every other position has NO_ENTITY and
keeps the model's own word embedding. With `plug=False` the same text is encoded without the `[E] /`
insertion (the knowledge-free input a downstream model is adapted on), segment by segment alike, so the
two encodings differ only by the insertion.

`form="masked"` drops the surface: the `[E]` token alone stands for the mention (the paper masks mentions
in general map-tuning). A mapper tuned this way must carry what the model should know of the entity,
which is what helps on entities the model has never read (benchmarks/results/plugin.md); with the
surface present the model answers from the name it knows and the mapper learns to add little.
`only=j` plugs the j-th mention alone and leaves the others as plain text.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from densa.plugins.kb import KnowledgeBase
from densa.plugins.mapper import NO_ENTITY, UNKNOWN, KnowledgePlugin, input_embedding

MENTION = re.compile(r"\[\[([^\]|]+)(?:\|([^\]]+))?\]\]")
SEPARATOR = " /"
"""Text between the [E] token and the mention (the paper's `[E] / mention`)."""
MentionForm = Literal["slash", "masked"]
MENTION_FORMS = ("slash", "masked")


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    entity_ids: list[int]
    """NO_ENTITY, UNKNOWN or an entity index, per position."""
    mention_spans: list[tuple[int, int]]
    """[start, end) token positions of each mention's surface tokens (empty for a masked mention)."""
    unknown: int
    """Mentions that linked to no entity (their [E] gets a zero vector)."""
    mention_entities: list[int]
    """Entity index (or UNKNOWN) of each mention; NO_ENTITY for all when not plugged."""


def encode_mentions(
    text: str,
    encode: Callable[[str], list[int]],
    kb: KnowledgeBase | None,
    placeholder_id: int,
    *,
    plug: bool = True,
    form: MentionForm = "slash",
    only: int | None = None,
) -> Encoded:
    """Tokenise `text` with its `[[...]]` mentions rewritten (see the module doc); `encode` maps a text
    piece to token ids (no BOS/EOS)."""
    if form not in MENTION_FORMS:
        raise ValueError(f"mention form {form!r}: expected one of {', '.join(MENTION_FORMS)}")
    ids: list[int] = []
    ents: list[int] = []
    spans: list[tuple[int, int]] = []
    linked: list[int] = []
    unknown, pos = 0, 0

    def add(piece: str) -> None:
        toks = encode(piece) if piece else []
        ids.extend(toks)
        ents.extend([NO_ENTITY] * len(toks))

    for j, m in enumerate(MENTION.finditer(text)):
        before = text[pos : m.start()]
        add(before.rstrip())
        plug_this = plug and (only is None or only == j)
        # Whitespace before a mention stays with the mention's first token, as BPE tokenisers attach it.
        lead = " " if before != before.rstrip() or (plug_this and ids) else ""
        surface, target = m.group(1).strip(), m.group(2)
        mention_entity = NO_ENTITY
        if plug_this:
            entity = None if kb is None else kb.link((target or surface).strip())
            unknown += entity is None
            mention_entity = UNKNOWN if entity is None else entity
            ids.append(placeholder_id)
            ents.append(mention_entity)
            if form == "masked":
                linked.append(mention_entity)
                spans.append((len(ids), len(ids)))
                pos = m.end()
                continue
            add(SEPARATOR)
            lead = " "
        linked.append(mention_entity)
        start = len(ids)
        add(lead + surface)
        spans.append((start, len(ids)))
        pos = m.end()
    add(text[pos:])
    return Encoded(ids, ents, spans, unknown, linked)


def plugged_embeds(
    model: nn.Module, plugin: KnowledgePlugin | None, input_ids: torch.Tensor, entity_ids: torch.Tensor
) -> torch.Tensor:
    """The model's token embeddings with each [E] position replaced by the plugin's mapped vector (or a
    zero vector: UNKNOWN, or no plugin plugged in)."""
    embeds = input_embedding(model)(input_ids)
    is_entity = (entity_ids != NO_ENTITY).unsqueeze(-1)
    if plugin is None:
        vectors = torch.zeros_like(embeds)
    else:
        vectors = plugin.vectors(entity_ids).to(embeds.dtype)
    return torch.where(is_entity, vectors, embeds)


def plugged_logits(
    model: nn.Module,
    plugin: KnowledgePlugin | None,
    input_ids: torch.Tensor,
    entity_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Logits [B, T, V] of a densa Transformer or an HF causal LM fed `plugged_embeds` via inputs_embeds."""
    embeds = plugged_embeds(model, plugin, input_ids, entity_ids)
    if hasattr(model, "get_input_embeddings"):  # HF (or PEFT over HF)
        return model(inputs_embeds=embeds, attention_mask=attention_mask).logits
    return model(None, inputs_embeds=embeds)
