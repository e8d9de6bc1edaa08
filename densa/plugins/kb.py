"""A knowledge base of (head, relation, tail) triples with entity aliases for mention linking.

File format (UTF-8, tab-separated, one record a line; `#` lines and blank lines are skipped):

    triple<TAB>HEAD<TAB>RELATION<TAB>TAIL
    alias<TAB>SURFACE FORM<TAB>ENTITY

Entities are the names that occur as a head or tail; every entity is its own alias. An alias that names
two entities links to none (ambiguous mentions count as unknown, like mentions of no entity at all).
`kb_from_facts` builds one from densa's fact table (densa.data.facts) plus the alternative spellings
countryinfo ships ("French Republic" -> France).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from densa.data.facts import Fact
from densa.errors import DataError
from densa.outputs import write_text_atomic

MIN_ALIAS_CHARS = 4
"""Shorter alternative spellings (ISO codes like "FR") are too ambiguous in running text to link."""


def _norm(text: str) -> str:
    return " ".join(text.casefold().split())


@dataclass(frozen=True)
class KnowledgeBase:
    entities: tuple[str, ...]
    relations: tuple[str, ...]
    triples: tuple[tuple[int, int, int], ...]
    """(head, relation, tail) as indices into entities / relations."""
    aliases: Mapping[str, str] = field(default_factory=dict)
    """Extra surface form -> entity name (the names themselves are always aliases)."""

    def __post_init__(self) -> None:
        index = {e: i for i, e in enumerate(self.entities)}
        linker: dict[str, int | None] = {}
        for surface, entity in [*((e, e) for e in self.entities), *self.aliases.items()]:
            key, target = _norm(surface), index[entity]
            linker[key] = target if linker.get(key, target) == target else None  # ambiguous: no link
        object.__setattr__(self, "_index", index)
        object.__setattr__(self, "_linker", linker)

    @classmethod
    def from_triples(
        cls, triples: Iterable[tuple[str, str, str]], aliases: Mapping[str, str] | None = None
    ) -> KnowledgeBase:
        named = list(dict.fromkeys(triples))  # deterministic order, duplicates dropped
        entities = tuple(dict.fromkeys(x for h, _, t in named for x in (h, t)))
        relations = tuple(dict.fromkeys(r for _, r, _ in named))
        e, r = {x: i for i, x in enumerate(entities)}, {x: i for i, x in enumerate(relations)}
        known = {a: ent for a, ent in (aliases or {}).items() if ent in e}
        return cls(entities, relations, tuple((e[h], r[rel], e[t]) for h, rel, t in named), known)

    def entity_id(self, name: str) -> int:
        return self._index[name]  # type: ignore[attr-defined]

    def link(self, mention: str) -> int | None:
        """Entity index of a mention (name or alias, case- and space-insensitive); None when it links to
        no entity or to several."""
        return self._linker.get(_norm(mention))  # type: ignore[attr-defined]

    def fingerprint(self) -> str:
        """Short hash of entities, relations and triples: a mapper and embeddings belong to one KB."""
        blob = json.dumps([self.entities, self.relations, self.triples], ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]

    def subset(self, keep: Sequence[str]) -> KnowledgeBase:
        """The KB restricted to triples whose head is in `keep` (a domain of its own)."""
        heads = set(keep)
        named = [(self.entities[h], self.relations[r], self.entities[t]) for h, r, t in self.triples]
        return KnowledgeBase.from_triples([x for x in named if x[0] in heads], self.aliases)

    def save(self, path: str | os.PathLike) -> None:
        lines = ["# densa KB: triple<TAB>head<TAB>relation<TAB>tail | alias<TAB>surface<TAB>entity"]
        lines += [
            f"triple\t{self.entities[h]}\t{self.relations[r]}\t{self.entities[t]}" for h, r, t in self.triples
        ]
        lines += [f"alias\t{a}\t{e}" for a, e in sorted(self.aliases.items())]
        write_text_atomic(path, "\n".join(lines) + "\n")  # makes the folder; a failed write keeps the old


def read_kb(path: str | os.PathLike) -> KnowledgeBase:
    """Parse a KB file; a malformed line raises DataError naming the file and line."""
    triples: list[tuple[str, str, str]] = []
    aliases: list[tuple[int, str, str]] = []
    with open(path, encoding="utf-8") as f:
        for n, raw in enumerate(f, 1):
            line = raw.rstrip("\n")
            if not line.strip() or line.startswith("#"):
                continue
            fields = line.split("\t")
            kind, want = fields[0], {"triple": 4, "alias": 3}.get(fields[0])
            if want is None:
                raise DataError(f"{path}:{n}: unknown record {kind!r} (expected 'triple' or 'alias')")
            if len(fields) != want or not all(x.strip() for x in fields):
                raise DataError(
                    f"{path}:{n}: a {kind} line has {want} non-empty tab-separated fields, got {len(fields)}"
                    f": {line[:80]!r}"
                )
            if kind == "triple":
                triples.append((fields[1], fields[2], fields[3]))
            else:
                aliases.append((n, fields[1], fields[2]))
    if not triples:
        raise DataError(f"{path}: no triples")
    kb = KnowledgeBase.from_triples(triples)
    for n, surface, entity in aliases:
        if entity not in kb._index:  # type: ignore[attr-defined]
            raise DataError(f"{path}:{n}: alias {surface!r} names {entity!r}, which is in no triple")
    return KnowledgeBase.from_triples(triples, {s: e for _, s, e in aliases})


def country_aliases(countryinfo_data: str | os.PathLike) -> dict[str, str]:
    """Alternative spellings per country (countryinfo's altSpellings, native names), keyed by surface form."""
    out: dict[str, str] = {}
    for path in sorted(Path(countryinfo_data).glob("*.json")):
        record = json.loads(path.read_text(encoding="utf-8"))
        name = record.get("name")
        forms = [*(record.get("altSpellings") or []), record.get("nativeName") or ""]
        for form in forms:
            if name and len(form) >= MIN_ALIAS_CHARS and form != name:
                out[form] = name
    return out


def kb_from_facts(facts: Sequence[Fact], aliases: Mapping[str, str] | None = None) -> KnowledgeBase:
    """Every fact as a triple (subject, relation, object); aliases for entities of the table."""
    return KnowledgeBase.from_triples(((f.subject, f.relation, f.object) for f in facts), aliases)
