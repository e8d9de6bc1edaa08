"""Map-tuning trains only the mapper: gradients reach it alone and the model stays bit-identical."""

from __future__ import annotations

import torch

from densa.models.loss import causal_lm_loss
from densa.models.transformer import Transformer
from densa.plugins.inject import plugged_logits
from densa.plugins.io import new_plugin
from densa.plugins.kb import KnowledgeBase
from densa.plugins.training import map_tune, mention_rows, plugin_loss, task_row
from densa.testing.models import tiny_model_config

KB = KnowledgeBase.from_triples([("France", "capital", "Paris"), ("Japan", "capital", "Tokyo")])
WORDS = ["<pad>", "<e>", "/", "the", "capital", "of", "is", "france", "paris", "japan", "tokyo", "atlantis"]


def encode(text: str) -> list[int]:
    return [WORDS.index(w) for w in text.lower().replace("/", " / ").split()]


def _setup():
    torch.manual_seed(0)
    model = Transformer(tiny_model_config(vocab_size=len(WORDS)))
    plugin = new_plugin(
        model, KB, torch.randn(len(KB.entities), 8, generator=torch.Generator().manual_seed(1))
    )
    texts = ["the capital of [[France]] is [[Paris]]", "the capital of [[Japan]] is [[Tokyo]]"]
    return model, plugin, mention_rows(texts, encode, KB, placeholder_id=1, seq_len=12)


def test_mention_rows_put_loss_on_mention_tokens_only() -> None:
    _, _, rows = _setup()
    row = rows[0]  # the capital of [E] / france is [E] / paris
    targets = [WORDS[int(row["labels"][t])] for t in row["loss_mask"].nonzero().flatten()]
    assert targets == ["france", "paris"]
    assert row["entity_ids"][3] == KB.entity_id("France") and row["entity_ids"][7] == KB.entity_id("Paris")


def test_masked_mention_rows_put_loss_on_the_text_after_the_masked_mention() -> None:
    texts = ["the capital of [[France]] is [[Paris]]", "[[Japan]] is the capital of [[Atlantis]]"]
    rows = mention_rows(texts, encode, KB, placeholder_id=1, seq_len=12, form="masked")
    # "... is [E]" has nothing after its mention and Atlantis links to no entity: two rows, not four.
    assert len(rows) == 2
    for row, words, entity, targets in (
        (rows[0], ["the", "capital", "of", "<e>", "is"], "France", ["is", "paris"]),
        (rows[1], ["<e>", "is", "the", "capital", "of"], "Japan", ["is", "the", "capital", "of", "atlantis"]),
    ):
        n = len(words)  # inputs stop one token early: the last token is only a label
        assert [WORDS[int(i)] for i in row["input_ids"][:n]] == words
        assert row["entity_ids"][words.index("<e>")] == KB.entity_id(entity)
        assert [WORDS[int(row["labels"][t])] for t in row["loss_mask"].nonzero().flatten()] == targets


def test_loss_matches_full_logits_reference() -> None:
    model, plugin, rows = _setup()
    batch = {k: torch.stack([r[k] for r in rows]) for k in rows[0]}
    ref = causal_lm_loss(
        plugged_logits(model, plugin, batch["input_ids"], batch["entity_ids"]),
        batch["labels"],
        batch["loss_mask"],
    )
    assert torch.allclose(plugin_loss(model, batch, plugin), ref, atol=1e-6)


def test_only_the_mapper_gets_gradients_and_the_model_is_unchanged() -> None:
    model, plugin, rows = _setup()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    mapper_before = {k: v.clone() for k, v in plugin.mapper.state_dict().items()}
    batch = {k: torch.stack([r[k] for r in rows]) for k in rows[0]}
    model.requires_grad_(False)
    plugin_loss(model, batch, plugin).backward()
    assert all(p.grad is None for p in model.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in plugin.mapper.parameters())
    model.requires_grad_(True)  # map_tune freezes it itself and restores requires_grad afterwards
    losses = map_tune(model, plugin, rows, steps=30, lr=1e-2, batch_size=2)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters())
    assert not torch.equal(mapper_before["weight"], plugin.mapper.weight)
    assert losses[-1] < losses[0]


def test_task_row_plain_and_plugged_differ_only_by_the_insertion() -> None:
    plugged = task_row("the capital of [[Japan]] is", "tokyo", encode, KB, 1, seq_len=10)
    plain = task_row("the capital of [[Japan]] is", "tokyo", encode, KB, 1, seq_len=10, plug=False)
    words = lambda r: [WORDS[int(i)] for i in r["input_ids"]]  # noqa: E731
    assert words(plugged)[:7] == ["the", "capital", "of", "<e>", "/", "japan", "is"]
    assert words(plain)[:5] == ["the", "capital", "of", "japan", "is"]
    for row in (plugged, plain):
        (pos,) = row["loss_mask"].nonzero().flatten().tolist()
        assert WORDS[int(row["labels"][pos])] == "tokyo"
