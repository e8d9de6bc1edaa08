"""Downstream tasks and map-tuning text built from the fact table (densa.data.facts), with `[[mentions]]`.

Three tasks mirror the paper's (Wiki80, Wiki-ET, EntityQuestions), each answered by one word:
- `relation`: relation classification between two marked entities, `# [[city]] # $ [[country]] $`:
  capital (the city is the country's capital), in (a city of it) or not (a city of another country);
- `typing`: entity typing of a city by its continent;
- `qa`: cloze QA, which country a city is in.
Cities are split by a hash of the name: a third are held out (`test`), never in a pretraining
statement nor a training example, so answering for them needs knowledge the model cannot have: these
are the knowledge-dependent examples. Countries fall in two domains by a hash of the name; a city
belongs to its country's domain (the domain swap plugs a second KB, of the other domain, in).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass

from densa.data.facts import Fact

TASKS = ("relation", "typing", "qa")
STATEMENTS = {
    "country": "[[{s}]] is a city in [[{o}]] .",
    "continent": "[[{s}]] is in [[{o}]] .",
    "capital": "The capital of [[{s}]] is [[{o}]] .",
    "currency": "The currency of [[{s}]] is the [[{o}]] .",
    "demonym": "People from [[{s}]] are [[{o}]] .",
    "calling_code": "The calling code of [[{s}]] is [[{o}]] .",
    "tld": "The domain of [[{s}]] is [[{o}]] .",
}
PROMPTS = {
    "relation": "# [[{city}]] # $ [[{country}]] $ relation :",
    "typing": "[[{city}]] type :",
    "qa": "Q : which country is [[{city}]] in ? A :",
}
RELATION_LABELS = ("capital", "in", "not")


def _bucket(name: str, salt: str, n: int) -> int:
    return hashlib.sha1(f"{salt}:{name}".encode()).digest()[0] % n


def city_split(city: str) -> str:
    return "test" if _bucket(city, "plugin-split", 3) == 0 else "train"


def domain_of(country: str) -> str:
    return "A" if _bucket(country, "plugin-domain", 2) == 0 else "B"


def plain(text: str) -> str:
    """Text with its mention markup removed (what a knowledge-free model reads)."""
    import re

    return re.sub(r"\[\[([^\]|]+)(?:\|[^\]]+)?\]\]", r"\1", text)


@dataclass(frozen=True)
class Example:
    prompt: str
    """With [[mentions]]; `plain(prompt)` for the knowledge-free input."""
    answer: str
    split: str
    domain: str


@dataclass(frozen=True)
class World:
    facts: tuple[Fact, ...]
    country_of: dict[str, str]
    continent_of: dict[str, str]
    capital_of: dict[str, str]
    """country -> capital city."""

    @classmethod
    def from_facts(cls, facts: Sequence[Fact]) -> World:
        get = lambda rel: {f.subject: f.object for f in facts if f.relation == rel}  # noqa: E731
        continents = {f.subject: f.object for f in facts if f.relation == "continent"}
        return cls(tuple(facts), get("country"), continents, get("capital"))

    def domain(self, entity: str) -> str:
        return domain_of(self.country_of.get(entity, entity))

    def countries(self, domain: str) -> list[str]:
        return sorted({c for c in self.country_of.values() if domain_of(c) == domain})

    def known(self, fact: Fact) -> bool:
        """A fact that names no held-out city (the model may have read it)."""
        return not any(x in self.country_of and city_split(x) == "test" for x in (fact.subject, fact.object))

    def statements(self, domain: str | None = None, known_only: bool = True) -> list[str]:
        """One marked-up statement per fact (of `domain`'s subjects), plus for each known city one
        statement that it is not in a random other country (RELATION_LABELS' words all occur)."""
        rng = random.Random(0)
        out, pool = [], sorted(set(self.country_of.values()))
        for f in self.facts:
            if (domain is None or self.domain(f.subject) == domain) and (not known_only or self.known(f)):
                out.append(STATEMENTS[f.relation].format(s=f.subject, o=f.object))
                if f.relation == "country":
                    other = rng.choice([c for c in pool if c != f.object])
                    out.append(f"[[{f.subject}]] is not in [[{other}]] .")
        return out

    def task(self, name: str, domain: str) -> tuple[list[Example], list[str]]:
        """Examples of task `name` for the cities of `domain`, and the candidate answers."""
        rng = random.Random(f"{name}:{domain}")
        countries = self.countries(domain)
        capitals = {city: country for country, city in self.capital_of.items()}
        examples = []
        for city, country in sorted(self.country_of.items()):
            if domain_of(country) != domain:
                continue
            split = city_split(city)
            if name == "qa":
                examples.append(Example(PROMPTS["qa"].format(city=city), country, split, domain))
            elif name == "typing":
                answer = self.continent_of[city]
                examples.append(Example(PROMPTS["typing"].format(city=city), answer, split, domain))
            elif name == "relation":
                label = "capital" if capitals.get(city) == country else "in"
                other = rng.choice([c for c in countries if c != country])
                for c, lab in ((country, label), (other, "not")):
                    prompt = PROMPTS["relation"].format(city=city, country=c)
                    examples.append(Example(prompt, lab, split, domain))
            else:
                raise ValueError(f"task {name!r}: expected one of {', '.join(TASKS)}")
        candidates = {
            "qa": countries,
            "typing": sorted({self.continent_of[c] for c in self.country_of}),
            "relation": list(RELATION_LABELS),
        }[name]
        return examples, candidates
