"""Note-reading instruction data ("the instruction setup"): teach a reader EREN's skill.

A small instruction-tuned model does not read notes selectively out of the box: shown a note about the
same subject it answers from it even when it does not answer the question, and it prefers what it
remembers over a note that contradicts it. Each example here is a chat turn whose context is built the
way inference builds it, by the same retriever over a pool of notes (top-k, the relevant note at a
random position), so the reader learns the retriever's errors:

    positive      a note answers; >= 50% of them state a counterfactual object (only reading can give it);
                  some contexts also hold forced same-relation or same-subject notes, so the answer must
                  be picked by subject and relation, not by how plausible the object sounds
    negative      no note answers -> "unanswerable"; contexts hold same-subject/other-relation notes,
                  same-relation/other-subject notes, look-alike subjects, or plain retrieval results
    closed_book   "Please answer this question: q" -> the true object (the fallback step)
    two_hop       notes (city, country, C) and (C, capital, X) -> "capital of the country where city is";
                  one hop missing -> "unanswerable"

Subjects come from the `sft` half of the fact table only, relations from `SFT_RELATIONS` only, and
questions from the training templates only: evaluation uses the other subjects, the held-out relations
(`currency`, `demonym`) and the held-out question wordings.
"""

from __future__ import annotations

import json
import os
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from densa.editing.notebook import Note
from densa.editing.prompts import ABSTAIN, CLOSED_BOOK_VARIANTS, READ_VARIANTS, context_of
from densa.editing.templates import SFT_RELATIONS, TEMPLATES, TWO_HOP
from densa.editing.world import World
from densa.outputs import write_text_atomic

MIX = {"positive": 0.45, "negative": 0.32, "closed_book": 0.13, "two_hop": 0.10}
# Distractors forced next to the answering note. Without them a reader shown a counterfactual note
# among retrieved notes of the same relation learns to abstain when the object sounds implausible
# ("Amman is in Papua New Guinea"), which was most of its edit-success errors.
POSITIVE_CONTEXTS = {"retrieved": 0.5, "same_relation": 0.3, "same_subject": 0.2}
NEGATIVE_KINDS = {
    "retrieved": 0.35,
    "same_subject": 0.25,
    "same_relation": 0.20,
    "lookalike": 0.10,
    "random": 0.10,
}


@dataclass
class Spec:
    kind: str
    question: str
    target: str
    gold: list[str] = field(default_factory=list)
    """Notes that must be in the context."""
    forced: list[str] = field(default_factory=list)
    """Distractor notes that must be in the context."""
    exclude: set[tuple[str, str]] = field(default_factory=set)
    """(subject, relation) pairs whose pool notes may not appear (they would answer or contradict)."""
    k: int = 0
    detail: str = ""
    context: str = ""
    """How a positive's distractors were chosen (`POSITIVE_CONTEXTS`); counted in the stats."""


def _statement(subject: str, relation: str, obj: str, rng: random.Random) -> str:
    t = TEMPLATES[relation]
    return t.statement(subject, obj, rng.randrange(len(t.statements)))


def _question(subject: str, relation: str, rng: random.Random) -> str:
    t = TEMPLATES[relation]
    return t.question(subject, rng.randrange(len(t.train_questions)))


def _distractors(
    world: World,
    subject: str,
    relation: str,
    context: str,
    rng: random.Random,
    by_relation: dict[str, list[tuple[str, str, str]]],
    n: int,
) -> list[str]:
    """Notes that do not answer (subject, relation): other subjects' `relation`, or `subject`'s other
    relations; each states its true object or a counterfactual one."""
    if context == "same_relation":
        picks = [
            (s2, relation, o2) for s2, _, o2 in rng.sample(by_relation[relation], n + 1) if s2 != subject
        ]
    elif context == "same_subject":
        others = [
            (subject, rel, o)
            for rel, o in world.by_subject[subject].items()
            if rel != relation and rel in SFT_RELATIONS
        ]
        picks = rng.sample(others, min(n, len(others)))
    else:
        return []
    return [
        _statement(s2, r2, world.counterfactual(r2, o2, rng) if rng.random() < 0.5 else o2, rng)
        for s2, r2, o2 in picks[:n]
    ]


def build_eren_sft(
    world: World,
    retriever,
    n_examples: int = 3000,
    seed: int = 0,
    max_k: int = 6,
    counterfactual_ratio: float = 0.75,
    pool_ratio: float = 0.5,
) -> tuple[list[dict], dict]:
    """(records, stats): chat records `{"messages": [...], "kind": ...}` and counts per kind."""
    rng = random.Random(seed)
    facts = [
        (s, r, o) for s in world.subjects("sft") for r, o in world.by_subject[s].items() if r in SFT_RELATIONS
    ]
    # The pool: notes a notebook would hold, true or counterfactual, over the sft subjects.
    pool_keys: list[tuple[str, str]] = []
    pool_notes: list[Note] = []
    for s, r, o in facts:
        if rng.random() < pool_ratio:
            obj = world.counterfactual(r, o, rng) if rng.random() < 0.5 else o
            pool_notes.append(Note(f"p{len(pool_notes):06d}", _statement(s, r, obj, rng)))
            pool_keys.append((s, r))
    retriever.index(pool_notes)
    by_relation: dict[str, list[tuple[str, str, str]]] = {}
    for fact in facts:
        by_relation.setdefault(fact[1], []).append(fact)
    cities = [f for f in facts if f[1] == "country"]

    specs: list[Spec] = []
    kinds = list(MIX)
    for _ in range(n_examples):
        kind = rng.choices(kinds, weights=[MIX[k] for k in kinds])[0]
        k = rng.randint(1, max_k)
        s, r, o = rng.choice(facts)
        q = _question(s, r, rng)
        if kind == "positive":
            cf = rng.random() < counterfactual_ratio
            target = world.counterfactual(r, o, rng) if cf else o
            context = rng.choices(list(POSITIVE_CONTEXTS), weights=list(POSITIVE_CONTEXTS.values()))[0]
            forced = _distractors(world, s, r, context, rng, by_relation, n=rng.randint(1, 2))
            spec = Spec(kind, q, target, [_statement(s, r, target, rng)], forced, {(s, r)}, k)
            spec.detail = "counterfactual" if cf else "true"
            spec.context = context if forced else "retrieved"
            specs.append(spec)
        elif kind == "negative":
            neg = rng.choices(list(NEGATIVE_KINDS), weights=list(NEGATIVE_KINDS.values()))[0]
            forced = []
            if neg == "same_subject":
                others = [rel for rel in world.by_subject[s] if rel != r and rel in SFT_RELATIONS]
                if others:
                    rel = rng.choice(others)
                    obj = world.by_subject[s][rel]
                    forced.append(
                        _statement(
                            s, rel, world.counterfactual(rel, obj, rng) if rng.random() < 0.5 else obj, rng
                        )
                    )
            elif neg == "same_relation":
                s2, _, o2 = rng.choice(by_relation[r])
                if s2 != s:
                    forced.append(_statement(s2, r, o2, rng))
            elif neg == "lookalike":
                for s2 in world.lookalikes(s, limit=2):
                    if r in world.by_subject[s2]:
                        forced.append(_statement(s2, r, world.by_subject[s2][r], rng))
            elif neg == "random":
                forced = [
                    n.text
                    for n in rng.sample(pool_notes, min(k, len(pool_notes)))
                    if pool_keys[int(n.id[1:])] != (s, r)
                ]
                k = len(forced)
            specs.append(Spec(kind, q, ABSTAIN, [], forced, {(s, r)}, max(k, len(forced)), neg))
        elif kind == "closed_book":
            specs.append(Spec(kind, q, o, detail="true"))
        else:  # two_hop over (city, country, C), (C, capital, X)
            city, _, country = rng.choice(cities)
            country2 = world.counterfactual("country", country, rng) if rng.random() < 0.5 else country
            capital = world.get(country2, "capital") or world.counterfactual("capital", "", rng)
            capital2 = world.counterfactual("capital", capital, rng) if rng.random() < 0.5 else capital
            hop1 = _statement(city, "country", country2, rng)
            hop2 = _statement(country2, "capital", capital2, rng)
            question = TWO_HOP[("country", "capital")].format(s=city)
            exclude = {(city, "country"), (country2, "capital")}
            if rng.random() < 0.3:
                gold = [hop1] if rng.random() < 0.5 else [hop2]
                specs.append(Spec(kind, question, ABSTAIN, [], gold, exclude, max(k, 2), "missing_hop"))
            else:
                specs.append(Spec(kind, question, capital2, [hop1, hop2], [], exclude, max(k, 2), "complete"))

    # One retrieval pass for every question that reads notes.
    reading = [sp for sp in specs if sp.kind != "closed_book"]
    hits = retriever.search([sp.question for sp in reading], max_k + 8) if reading else []
    hit_rows = iter(hits)
    stats: Counter = Counter()
    out = []
    for sp in specs:
        stats[f"{sp.kind}/{sp.detail}"] += 1
        if sp.context:
            stats[f"{sp.kind}/context/{sp.context}"] += 1
        if sp.kind == "closed_book":
            user = rng.choice(CLOSED_BOOK_VARIANTS).format(question=sp.question)
        else:
            retrieved = [
                h.note.text for h in next(hit_rows) if pool_keys[int(h.note.id[1:])] not in sp.exclude
            ]
            fixed = sp.gold + sp.forced
            notes = [t for t in retrieved if t not in fixed][: max(sp.k - len(fixed), 0)]
            for text in fixed:  # the relevant note (and forced distractors) at random positions
                notes.insert(rng.randint(0, len(notes)), text)
            template = READ_VARIANTS[0] if rng.random() < 0.4 else rng.choice(READ_VARIANTS[1:])
            user = template.format(context=context_of(notes), question=sp.question)
        out.append(
            {
                "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": sp.target}],
                "kind": sp.kind,
                "detail": sp.detail,
                **({"context": sp.context} if sp.context else {}),
            }
        )
    return out, {"examples": len(out), "pool_notes": len(pool_notes), "by_kind": dict(sorted(stats.items()))}


def write_jsonl(records: list[dict], path: str | os.PathLike) -> Path:
    return write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
