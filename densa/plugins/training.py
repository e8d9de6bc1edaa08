"""Map-tuning: rows, the loss, and a small standalone loop (tests, benchmarks); `densa.train` runs the
same loss through the `plugin:` recipe section (densa.plugins.recipe).

- General map-tuning, the decoder analogue of the paper's mention-masked LM. Form `slash`: text with
  `[[mentions]]` rewritten `[E] / mention`; the loss is on the mention tokens only, which a causal LM
  predicts after the [E] token, so the frozen model must read the mention out of the injected vector.
  Form `masked`: one row per mention, that mention replaced by [E] alone (the others plain text), the
  loss on the text after it: the model must read what follows from the entity ("[E] is a city in
  France ."), so the mapper learns to carry the entity's facts, not only its name.
- Task-specific map-tuning: downstream examples (prompt with mentions, answer); loss on the answer.

In both only the mapper trains: the model is frozen and its weights stay bit-identical.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn

from densa.models.loss import causal_lm_loss
from densa.plugins.inject import (
    MENTION,
    Encoded,
    MentionForm,
    encode_mentions,
    plugged_embeds,
    plugged_logits,
)
from densa.plugins.kb import KnowledgeBase
from densa.plugins.mapper import NO_ENTITY, KnowledgePlugin

PLUGIN_ATTR = "knowledge_plugin"
"""Attribute a recipe run attaches the plugin under, so the engine's optimizer sees only the mapper."""
Row = dict[str, torch.Tensor]


def _row(enc: Encoded, targets: Sequence[int], seq_len: int) -> Row:
    """input_ids/entity_ids/labels/loss_mask [seq_len] (labels shifted: label t = token t+1; loss on the
    positions that predict a token in `targets`). Longer encodings keep their first seq_len + 1 tokens."""
    ids, ents = enc.input_ids[: seq_len + 1], enc.entity_ids[: seq_len + 1]
    n = len(ids) - 1
    pad = seq_len - n
    mask = [0] * seq_len
    for t in targets:
        if 0 < t <= n:
            mask[t - 1] = 1
    return {
        "input_ids": torch.tensor(ids[:-1] + [0] * pad),
        "entity_ids": torch.tensor(ents[:-1] + [NO_ENTITY] * pad),
        "labels": torch.tensor(ids[1:] + [-100] * pad),
        "loss_mask": torch.tensor(mask, dtype=torch.float32),
    }


def mention_rows(
    texts: Iterable[str],
    encode: Callable[[str], list[int]],
    kb: KnowledgeBase,
    placeholder_id: int,
    seq_len: int,
    form: MentionForm = "slash",
) -> list[Row]:
    """General map-tuning rows (see the module doc). slash: loss on each linked mention's tokens;
    masked: per linked mention, a row with it masked and the loss on the tokens after it. Unlinked
    mentions carry no loss."""
    rows = []
    for text in texts:
        if form == "masked":
            for j in range(len(MENTION.findall(text))):
                enc = encode_mentions(text, encode, kb, placeholder_id, form="masked", only=j)
                at = enc.mention_spans[j][0] - 1  # the [E] position
                if enc.mention_entities[j] >= 0 and at + 1 < len(enc.input_ids):
                    rows.append(_row(enc, range(at + 1, len(enc.input_ids)), seq_len))
            continue
        enc = encode_mentions(text, encode, kb, placeholder_id)
        spans = zip(enc.mention_spans, enc.mention_entities, strict=True)
        targets = [t for (start, end), entity in spans if entity >= 0 for t in range(start, end)]
        if targets:
            rows.append(_row(enc, targets, seq_len))
    return rows


def task_row(
    prompt: str,
    answer: str,
    encode: Callable[[str], list[int]],
    kb: KnowledgeBase | None,
    placeholder_id: int,
    seq_len: int,
    *,
    plug: bool = True,
    form: MentionForm = "slash",
) -> Row:
    """A downstream example: `prompt` (with mentions) then `answer`, loss on the answer tokens;
    `plug=False` gives the knowledge-free input the downstream model is adapted on."""
    enc = encode_mentions(prompt, encode, kb, placeholder_id, plug=plug, form=form)
    answer_ids = encode(answer)
    full = Encoded(
        enc.input_ids + answer_ids,
        enc.entity_ids + [NO_ENTITY] * len(answer_ids),
        enc.mention_spans,
        enc.unknown,
        enc.mention_entities,
    )
    start = len(enc.input_ids)
    return _row(full, range(start, start + len(answer_ids)), seq_len)


def attached_plugin(model: nn.Module) -> KnowledgePlugin | None:
    inner = getattr(model, "module", model)  # a DeepSpeed engine wraps the model
    return getattr(inner, PLUGIN_ATTR, None)


def plugin_loss(model: nn.Module, batch: Row, plugin: KnowledgePlugin | None = None) -> torch.Tensor:
    """Masked next-token CE of the model fed mapped vectors at [E] positions; shaped as the trainer's
    LossFn `(model, batch)`: the plugin defaults to the one attached to the model (`attach_plugin`)."""
    plugin = plugin if plugin is not None else attached_plugin(model)
    inner = getattr(model, "module", model)
    if hasattr(inner, "hidden_states") and not hasattr(inner, "get_input_embeddings"):
        # densa: project only the positions that carry loss (rows are mostly prompt and padding).
        embeds = plugged_embeds(inner, plugin, batch["input_ids"], batch["entity_ids"])
        # Through the module, not a DeepSpeed engine's forward: plugin runs use ZeRO 0-2 (no gathering).
        hidden = inner.hidden_states(None, inputs_embeds=embeds)
        keep = batch["loss_mask"].bool()
        logits = nn.functional.linear(hidden[keep], inner.output_weight)
        return nn.functional.cross_entropy(logits.float(), batch["labels"][keep])
    logits = plugged_logits(model, plugin, batch["input_ids"], batch["entity_ids"])
    return causal_lm_loss(logits, batch["labels"], batch["loss_mask"])


def attach_plugin(model: nn.Module, plugin: KnowledgePlugin) -> KnowledgePlugin:
    """Attach `plugin` to `model` and freeze everything else (call before the optimizer exists)."""
    model.requires_grad_(False)
    setattr(model, PLUGIN_ATTR, plugin)
    plugin.mapper.requires_grad_(True)
    return plugin


def fit(
    model: nn.Module,
    plugin: KnowledgePlugin | None,
    rows: Sequence[Row],
    params: Iterable[nn.Parameter],
    *,
    steps: int,
    lr: float,
    batch_size: int = 32,
    seed: int = 0,
    weight_decay: float = 0.0,
) -> list[float]:
    """AdamW on `params` (the mapper's for map-tuning; the model's for adaptation) over shuffled
    epochs of `rows`; returns the loss per step."""
    params = [p for p in params if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    rng, order, losses = random.Random(seed), [], []
    model.train()
    for _ in range(steps):
        if len(order) < batch_size:
            fresh = list(range(len(rows)))
            rng.shuffle(fresh)
            order += fresh
        idx, order = order[:batch_size], order[batch_size:]
        batch = {k: torch.stack([rows[i][k] for i in idx]) for k in rows[0]}
        loss = plugin_loss(model, batch, plugin)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(float(loss.detach()))
    model.eval()
    return losses


def map_tune(
    model: nn.Module, plugin: KnowledgePlugin, rows: Sequence[Row], *, steps: int, lr: float = 2e-3, **kw
) -> list[float]:
    """Train only the mapper on `rows` with `model` frozen (requires_grad restored afterwards)."""
    was = {n: p.requires_grad for n, p in model.named_parameters()}
    model.requires_grad_(False)
    try:
        return fit(model, plugin, rows, plugin.mapper.parameters(), steps=steps, lr=lr, **kw)
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(was[n])
