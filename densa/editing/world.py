"""A fact table indexed for building edits, probes and instruction data.

Subjects are split deterministically (a hash of the name) into an instruction-data half (`sft`) and
an evaluation half (`eval`), so the reader is evaluated on entities it never trained on.
"""

from __future__ import annotations

import hashlib
import random
from collections import defaultdict
from collections.abc import Sequence

from densa.data.facts import Fact
from densa.editing.templates import TEMPLATES

SPLITS = ("sft", "eval")


def split_of(subject: str) -> str:
    return "sft" if hashlib.sha1(subject.encode("utf-8")).digest()[0] % 2 == 0 else "eval"


class World:
    def __init__(self, facts: Sequence[Fact]) -> None:
        self.facts = [f for f in facts if f.relation in TEMPLATES]
        self.by_subject: dict[str, dict[str, str]] = defaultdict(dict)
        self.kind: dict[str, str] = {}
        ranges: dict[str, set[str]] = defaultdict(set)
        for f in self.facts:
            self.by_subject[f.subject][f.relation] = f.object
            self.kind[f.subject] = f.subject_kind
            ranges[f.relation].add(f.object)
        self.ranges = {r: sorted(objs) for r, objs in ranges.items()}

    def subjects(self, split: str | None = None, relation: str | None = None) -> list[str]:
        out = [
            s
            for s, rels in self.by_subject.items()
            if (split is None or split_of(s) == split) and (relation is None or relation in rels)
        ]
        return sorted(out)

    def get(self, subject: str, relation: str) -> str | None:
        return self.by_subject.get(subject, {}).get(relation)

    def counterfactual(self, relation: str, true_object: str, rng: random.Random) -> str:
        """Another object of the same relation (a plausible but false value)."""
        pool = self.ranges[relation]
        while True:
            obj = rng.choice(pool)
            if obj != true_object:
                return obj

    def lookalikes(self, subject: str, limit: int = 5) -> list[str]:
        """Subjects sharing a word (or a 4+ letter prefix) with `subject`: Guinea-Bissau, Nigeria..."""
        words = {w for w in subject.replace("-", " ").split() if len(w) > 3}
        prefix = subject[:4]
        found = [
            s
            for s in self.by_subject
            if s != subject and (s.startswith(prefix) or words & set(s.replace("-", " ").split()))
        ]
        return sorted(found)[:limit]
