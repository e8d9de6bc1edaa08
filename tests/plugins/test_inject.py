"""The `[E] / mention` rewrite, mapped vectors as input embeddings (densa and HF), plugin files."""

from __future__ import annotations

import pytest
import torch

from densa.models.hf.parity import tiny_hf_model
from densa.models.transformer import Transformer
from densa.plugins.errors import PluginError
from densa.plugins.inject import encode_mentions, plugged_embeds, plugged_logits
from densa.plugins.io import load_embeddings, load_plugin, new_plugin, save_embeddings, save_plugin
from densa.plugins.kb import KnowledgeBase
from densa.plugins.mapper import NO_ENTITY, UNKNOWN
from densa.testing.models import tiny_model_config

KB = KnowledgeBase.from_triples(
    [("France", "capital", "Paris"), ("Japan", "capital", "Tokyo")], {"French Republic": "France"}
)
WORDS = ["<E>", "/", "the", "capital", "of", "is", "France", "French", "Republic", "Atlantis", "Paris"]


def encode(text: str) -> list[int]:
    return [WORDS.index(w) for w in text.lower().replace("/", " / ").split() if w] if text else []


WORDS = [w.lower() for w in WORDS]


def test_rewrite_inserts_entity_token_and_counts_unknown() -> None:
    enc = encode_mentions("The capital of [[French Republic]] is [[Atlantis]]", encode, KB, placeholder_id=0)
    words = [WORDS[i] for i in enc.input_ids]
    assert words == ["the", "capital", "of", "<e>", "/", "french", "republic", "is", "<e>", "/", "atlantis"]
    assert enc.entity_ids == [NO_ENTITY] * 3 + [KB.entity_id("France")] + [NO_ENTITY] * 4 + [UNKNOWN, -1, -1]
    assert enc.mention_spans == [(5, 7), (10, 11)] and enc.unknown == 1
    plain = encode_mentions("The capital of [[French Republic]] is [[Atlantis]]", encode, KB, 0, plug=False)
    plain_words = ["the", "capital", "of", "french", "republic", "is", "atlantis"]
    assert [WORDS[i] for i in plain.input_ids] == plain_words
    assert plain.mention_spans == [(3, 5), (6, 7)] and set(plain.entity_ids) == {NO_ENTITY}
    linked = encode_mentions("[[Paris|Japan]]", encode, KB, 0)  # explicit link wins over the surface
    assert linked.entity_ids[0] == KB.entity_id("Japan")


def test_masked_form_drops_the_surface_and_only_plugs_one_mention() -> None:
    text = "The capital of [[French Republic]] is [[Atlantis]]"
    masked = encode_mentions(text, encode, KB, placeholder_id=0, form="masked")
    assert [WORDS[i] for i in masked.input_ids] == ["the", "capital", "of", "<e>", "is", "<e>"]
    assert masked.entity_ids == [NO_ENTITY] * 3 + [KB.entity_id("France"), NO_ENTITY, UNKNOWN]
    assert masked.mention_spans == [(4, 4), (6, 6)] and masked.unknown == 1
    first = encode_mentions(text, encode, KB, 0, form="masked", only=0)
    assert [WORDS[i] for i in first.input_ids] == ["the", "capital", "of", "<e>", "is", "atlantis"]
    assert first.mention_entities == [KB.entity_id("France"), NO_ENTITY] and first.unknown == 0
    second = encode_mentions(text, encode, KB, 0, only=1)  # slash form, the first mention plain
    assert [WORDS[i] for i in second.input_ids][3:] == ["french", "republic", "is", "<e>", "/", "atlantis"]
    with pytest.raises(ValueError, match="mention form 'mask': expected one of slash, masked"):
        encode_mentions(text, encode, KB, 0, form="mask")  # type: ignore[arg-type]


def _plugin_and_ids(model):
    emb = torch.randn(len(KB.entities), 8, generator=torch.Generator().manual_seed(0))
    plugin = new_plugin(model, KB, emb, seed=1)
    ids = torch.tensor([[2, 3, 0, 1, 6, 5, 0]])
    ents = torch.tensor([[-1, -1, KB.entity_id("Tokyo"), -1, -1, -1, UNKNOWN]])
    return plugin, emb, ids, ents


@pytest.mark.parametrize("family", ["densa", "hf"])
def test_entity_token_gets_mapped_vector(family: str) -> None:
    torch.manual_seed(0)
    model = Transformer(tiny_model_config(vocab_size=16)) if family == "densa" else tiny_hf_model("llama")
    plugin, emb, ids, ents = _plugin_and_ids(model)
    w, b = plugin.mapper.weight, plugin.mapper.bias
    embeds = plugged_embeds(model, plugin, ids, ents)
    table = model.embed_tokens.weight if family == "densa" else model.get_input_embeddings().weight
    assert torch.allclose(embeds[0, 2], w @ emb[KB.entity_id("Tokyo")] + b, atol=1e-6)
    assert torch.equal(embeds[0, 6], torch.zeros_like(embeds[0, 6]))  # unknown mention: zero vector
    assert torch.equal(embeds[0, [0, 1, 3, 4, 5]], table[ids[0, [0, 1, 3, 4, 5]]])
    # No entity position: the inputs_embeds path is the model's own forward.
    plain = torch.tensor([[2, 3, 4, 5]])
    ref = model(plain) if family == "densa" else model(plain).logits
    got = plugged_logits(model, plugin, plain, torch.full_like(plain, NO_ENTITY))
    assert torch.allclose(got, ref, atol=1e-6)
    # The vector matters: logits from the [E] position on change with it, those before do not.
    other = plugged_logits(model, plugin, ids, ents.masked_fill(ents >= 0, KB.entity_id("France")))
    base = plugged_logits(model, plugin, ids, ents)
    assert torch.equal(other[0, :2], base[0, :2]) and not torch.allclose(other[0, 2:], base[0, 2:])


def test_plugin_file_roundtrip_and_mismatches(tmp_path) -> None:
    torch.manual_seed(0)
    model = Transformer(tiny_model_config(vocab_size=16))
    plugin, emb, ids, ents = _plugin_and_ids(model)
    save_embeddings(tmp_path / "emb.safetensors", KB, emb)
    emb_back = load_embeddings(tmp_path / "emb.safetensors", KB)
    save_plugin(tmp_path / "mapper.safetensors", plugin)
    back = load_plugin(tmp_path / "mapper.safetensors", model, KB, emb_back)
    assert torch.equal(back.vectors(ents), plugin.vectors(ents))
    assert back.mention_form == "slash"
    plugin.mention_form = "masked"
    save_plugin(tmp_path / "masked.safetensors", plugin)
    assert load_plugin(tmp_path / "masked.safetensors", model, KB, emb_back).mention_form == "masked"
    assert (tmp_path / "mapper.safetensors").stat().st_size < 2000  # 8 x 32 + 32 floats and a header

    other_model = Transformer(tiny_model_config(vocab_size=16, dim=48, n_heads=4))
    with pytest.raises(PluginError, match="trained for another model: model_fingerprint "):
        load_plugin(tmp_path / "mapper.safetensors", other_model, KB, emb)
    other_kb = KnowledgeBase.from_triples([("Peru", "capital", "Lima")])
    with pytest.raises(PluginError, match="trained for another knowledge base: kb_fingerprint "):
        load_plugin(tmp_path / "mapper.safetensors", model, other_kb, emb)
    with pytest.raises(PluginError, match="another entity-embedding table"):
        load_plugin(tmp_path / "mapper.safetensors", model, KB, emb[torch.randperm(len(emb))])
    with pytest.raises(PluginError, match="embeddings of another knowledge base"):
        load_embeddings(tmp_path / "emb.safetensors", other_kb)


def test_init_mapper_tuned_with_another_mention_form_is_refused(tmp_path) -> None:
    from types import SimpleNamespace

    from densa.errors import DataError
    from densa.plugins.config import PluginConfig
    from densa.plugins.recipe import prepare

    torch.manual_seed(0)
    model = Transformer(tiny_model_config(vocab_size=16))
    plugin, emb, _, _ = _plugin_and_ids(model)  # new_plugin's default form: slash
    KB.save(tmp_path / "kb.tsv")
    save_embeddings(tmp_path / "emb.safetensors", KB, emb)
    save_plugin(tmp_path / "mapper.safetensors", plugin)
    settings = dict(enabled=True, kb=str(tmp_path / "kb.tsv"), embeddings=str(tmp_path / "emb.safetensors"))
    cfg = SimpleNamespace(
        plugin=PluginConfig(**settings, init_mapper=str(tmp_path / "mapper.safetensors")),
        run=SimpleNamespace(seed=0),
    )
    with pytest.raises(
        DataError, match="was tuned with mention_form 'slash', this run's plugin.mention_form is 'masked'"
    ):
        prepare(cfg, model)
    same = SimpleNamespace(
        plugin=PluginConfig(**settings, init_mapper=cfg.plugin.init_mapper, mention_form="slash"), run=cfg.run
    )
    prepare(same, model)
    assert model.knowledge_plugin.mention_form == "slash"
