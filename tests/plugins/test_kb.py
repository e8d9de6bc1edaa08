"""Knowledge base files and mention linking; TransE's defining property h + r ≈ t on a tiny KB."""

from __future__ import annotations

import pytest
import torch

from densa.data.facts import Fact
from densa.errors import DataError
from densa.plugins.kb import KnowledgeBase, kb_from_facts, read_kb
from densa.plugins.transe import TransE, TransEConfig, tail_ranks, train_transe

TRIPLES = [
    ("France", "capital", "Paris"),
    ("Japan", "capital", "Tokyo"),
    ("Kenya", "capital", "Nairobi"),
    ("Peru", "capital", "Lima"),
    ("France", "continent", "Europe"),
    ("Japan", "continent", "Asia"),
    ("Kenya", "continent", "Africa"),
    ("Peru", "continent", "South America"),
    ("Paris", "country", "France"),
    ("Tokyo", "country", "Japan"),
    ("Nairobi", "country", "Kenya"),
    ("Lima", "country", "Peru"),
]


def test_roundtrip_and_linking(tmp_path) -> None:
    kb = KnowledgeBase.from_triples(TRIPLES, {"French Republic": "France", "Nippon": "Japan", "X": "Nowhere"})
    kb.save(tmp_path / "new" / "kb.tsv")  # the folder is made, as `densa plugin kb --out` needs
    back = read_kb(tmp_path / "new" / "kb.tsv")
    assert back.fingerprint() == kb.fingerprint() and back.aliases == kb.aliases
    assert "X" not in kb.aliases  # an alias of an entity in no triple is dropped
    assert kb.link("  french   REPUBLIC ") == kb.entity_id("France")
    assert kb.link("tokyo") == kb.entity_id("Tokyo") and kb.link("Atlantis") is None
    assert len(kb.entities) == 12 and kb.relations == ("capital", "continent", "country")


def test_ambiguous_alias_links_to_none() -> None:
    kb = KnowledgeBase.from_triples(TRIPLES, {"Capital City": "Paris", "capital city": "Lima"})
    assert kb.link("Capital City") is None


def test_from_facts() -> None:
    kb = kb_from_facts([Fact("Lima", "city", "country", "Peru"), Fact("Peru", "country", "capital", "Lima")])
    assert kb.entities == ("Lima", "Peru") and kb.triples == ((0, 0, 1), (1, 1, 0))


@pytest.mark.parametrize(
    "line, message",
    [
        ("triple\tFrance\tcapital", "a triple line has 4 non-empty tab-separated fields, got 3"),
        ("triple\tFrance\t \tParis", "a triple line has 4 non-empty tab-separated fields, got 4"),
        ("fact\tFrance\tcapital\tParis", "unknown record 'fact' (expected 'triple' or 'alias')"),
        ("alias\tGaul\tGallia", "alias 'Gaul' names 'Gallia', which is in no triple"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path, line: str, message: str) -> None:
    path = tmp_path / "kb.tsv"
    path.write_text(f"# header\ntriple\tJapan\tcapital\tTokyo\n{line}\n", encoding="utf-8")
    with pytest.raises(DataError) as err:
        read_kb(path)
    assert str(err.value).startswith(f"{path}:3: {message}")


def test_distance_is_l1_of_h_plus_r_minus_t() -> None:
    model = TransE(3, 1, 4)
    h, r, t = torch.tensor([0]), torch.tensor([0]), torch.tensor([2])
    direct = (model.entity[0] + model.relation[0] - model.entity[2]).abs().sum()
    assert torch.allclose(model.distance(h, r, t), direct.reshape(1))


def test_transe_true_triples_beat_corrupted() -> None:
    """After training, every true triple is closer than every corruption of its tail that is not itself a
    true triple (filtered rank 1); with the untrained initialisation that fails."""
    kb = KnowledgeBase.from_triples(TRIPLES)
    triples = torch.tensor(kb.triples)
    model = train_transe(kb, TransEConfig(dim=16, epochs=300, batch_size=12, lr=0.02, seed=0))
    true = set(kb.triples)

    def filtered_wins(entity: torch.Tensor, relation: torch.Tensor) -> float:
        wins = []
        for h, r, t in kb.triples:
            d_true = (entity[h] + relation[r] - entity[t]).abs().sum()
            for other in range(len(kb.entities)):
                if (h, r, other) not in true:
                    wins.append(bool(d_true < (entity[h] + relation[r] - entity[other]).abs().sum()))
        return sum(wins) / len(wins)

    assert filtered_wins(model.entity, model.relation) == 1.0
    assert torch.allclose(model.entity.norm(dim=1), torch.ones(len(kb.entities)))
    untrained = TransE(len(kb.entities), len(kb.relations), 16)
    assert filtered_wins(untrained.entity, untrained.relation) < 0.9
    assert tail_ranks(model.entity, model.relation, triples[:4]).tolist() == [1, 1, 1, 1]  # 1-to-1 capital
