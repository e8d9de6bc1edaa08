"""The benchmark's substrate: fact-table KBs (domains A and B), their TransE tables, a word-level
tokenizer whose entity names are single tokens (so every answer is one token, as the paper keeps only
one-token EntityQuestions answers), and a small densa decoder pretrained on the known facts."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from densa.data.facts import fetch_facts, read_facts
from densa.data.fetch import cache_root
from densa.models.config import ModelConfig
from densa.models.transformer import Transformer
from densa.plugins.kb import KnowledgeBase, country_aliases, kb_from_facts
from densa.plugins.tasks import STATEMENTS, World, plain
from densa.plugins.training import fit, task_row
from densa.plugins.transe import TransEConfig, train_transe

SPECIALS = ("<pad>", "<E>")


@dataclass
class Substrate:
    world: World
    kbs: dict[str, KnowledgeBase]
    embeddings: dict[str, torch.Tensor]
    vocab: list[str]
    longest: int
    """Most words in an entity name."""

    @property
    def placeholder(self) -> int:
        return self.vocab.index("<E>")

    def encode(self, text: str) -> list[int]:
        """Words, with the longest run of words that names an entity as one token."""
        words, out, i = text.split(), [], 0
        while i < len(words):
            for n in range(min(self.longest, len(words) - i), 0, -1):
                piece = " ".join(words[i : i + n])
                if n == 1 or piece in self._index:
                    out.append(self._index[piece])
                    i += n
                    break
        return out

    def __post_init__(self) -> None:
        self._index = {w: i for i, w in enumerate(self.vocab)}


def build_substrate(transe: TransEConfig) -> Substrate:
    facts = read_facts(fetch_facts())
    world = World.from_facts(facts)
    aliases_dir = cache_root() / "pypi" / "facts" / "countryinfo" / "data"
    aliases = country_aliases(aliases_dir) if aliases_dir.is_dir() else {}
    kbs = {d: kb_from_facts([f for f in facts if world.domain(f.subject) == d], aliases) for d in ("A", "B")}
    embeddings = {d: train_transe(kb, transe).entity.detach() for d, kb in kbs.items()}
    entities = sorted({" ".join(x.split()) for f in facts for x in (f.subject, f.object)})
    words = " ".join([*STATEMENTS.values(), "is not in / # $ relation : type Q which country ? A capital"])
    word_set = sorted(set(plain(words).split()) - set(entities))
    vocab = [*SPECIALS, *entities, *word_set]
    return Substrate(world, kbs, embeddings, vocab, max(len(e.split()) for e in entities))


def pretrain(
    sub: Substrate, cfg: ModelConfig, steps: int, seq_len: int, seed: int
) -> tuple[Transformer, list]:
    """The PLM: LM loss on every known fact statement (both domains, no held-out city)."""
    rows = [
        task_row("", plain(s), sub.encode, None, sub.placeholder, seq_len, plug=False)
        for s in sub.world.statements(known_only=True)
    ]
    torch.manual_seed(seed)
    model = Transformer(cfg)
    losses = fit(model, None, rows, model.parameters(), steps=steps, lr=3e-3, batch_size=64, seed=seed)
    return model.requires_grad_(False), losses
