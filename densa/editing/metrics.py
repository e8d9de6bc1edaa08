"""Editing metrics under EREN's names (ES / BP / EQ) and EasyEdit's (rewrite_acc / rephrase_acc / locality).

Every probe row records what was asked, the pre-edit and post-edit answers and whether it counts:

- edit scope (`rewrite`: the request's prompt, `rephrase`: its paraphrases): correct when the post-edit
  answer matches `target_new` (exact match after normalisation, or the target as a whole-word span);
- locality (`same_subject`, `same_relation`, `unrelated`): preserved when the normalised post-edit answer
  equals the pre-edit one (the same system with no edits) — agreement, not accuracy, as in EREN and
  EasyEdit;
- `two_hop`: correct when the answer matches the object the two edited notes compose to.

ES = mean over scope probes; BP = mean of the three locality groups' means (each is also reported);
EQ = harmonic mean of ES and BP. `intervals` gives percentile bootstrap intervals that resample whole
edits (a request's probes are correlated: they share its note), so a goal such as "ES >= 90%" can be
read against the sampling noise of the scored edits.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from statistics import mean
from typing import Any

SCOPE = ("rewrite", "rephrase")
LOCALITY = ("same_subject", "same_relation", "unrelated")
PROTOCOL = (
    "greedy generation, first line of the answer; scope and two-hop: normalised answer equals the target"
    " or contains it as whole words; locality: normalised post-edit answer equals the pre-edit answer of"
    " the same system without edits"
)


def _rate(rows: Sequence[dict[str, Any]], key: str = "correct") -> float | None:
    values = [bool(r[key]) for r in rows if r.get(key) is not None]
    return mean(values) if values else None


def harmonic(a: float | None, b: float | None) -> float | None:
    if a is None or b is None:
        return None
    return 0.0 if a + b == 0 else 2 * a * b / (a + b)


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    groups = {g: [r for r in rows if r["group"] == g] for g in (*SCOPE, *LOCALITY, "two_hop")}
    scope = groups["rewrite"] + groups["rephrase"]
    es = _rate(scope)
    bp_parts = {g: _rate(groups[g]) for g in LOCALITY}
    present = [v for v in bp_parts.values() if v is not None]
    bp = mean(present) if present else None
    locality_rows = [r for g in LOCALITY for r in groups[g]]
    return {
        "ES": es,
        "BP": bp,
        "EQ": harmonic(es, bp),
        **{f"BP_{g}": v for g, v in bp_parts.items()},
        "rewrite_acc": _rate(groups["rewrite"]),
        "rephrase_acc": _rate(groups["rephrase"]),
        "locality_acc": bp,
        **{f"locality.{g}_acc": v for g, v in bp_parts.items()},
        "two_hop_acc": _rate(groups["two_hop"]),
        "retrieval_recall": _rate(scope, "retrieved_edit"),
        "two_hop_recall": _rate(groups["two_hop"], "retrieved_edit"),
        "scope_read_from_notes": _rate(scope, "from_notes"),
        "locality_read_from_notes": _rate(locality_rows, "from_notes"),
        "locality_pre_accuracy": _rate(locality_rows, "pre_correct"),
        "counts": {g: len(v) for g, v in groups.items()},
        "protocol": PROTOCOL,
    }


def intervals(
    rows: Sequence[dict[str, Any]],
    keys: Sequence[str] = ("ES", "BP", "EQ"),
    *,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, list[float] | None]:
    """Percentile bootstrap intervals of `summarize(rows)[key]`, resampling edits (`case_id`) with
    replacement; rows without a case (two-hop questions) are left out."""
    by_case: dict[int, list[dict[str, Any]]] = {}
    for row in rows:
        if row.get("case_id") is not None:
            by_case.setdefault(row["case_id"], []).append(row)
    cases = sorted(by_case)
    if not cases:
        return {k: None for k in keys}
    rng = random.Random(seed)
    draws: dict[str, list[float]] = {k: [] for k in keys}
    for _ in range(n_boot):
        sample = [r for c in rng.choices(cases, k=len(cases)) for r in by_case[c]]
        stats = summarize(sample)
        for k in keys:
            if stats[k] is not None:
                draws[k].append(stats[k])
    tail = (1 - level) / 2
    out: dict[str, list[float] | None] = {}
    for k, values in draws.items():
        values.sort()
        out[k] = (
            [values[int(tail * (len(values) - 1))], values[round((1 - tail) * (len(values) - 1))]]
            if values
            else None
        )
    return out
