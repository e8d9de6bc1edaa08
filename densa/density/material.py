"""The density suite's text: a pretraining mixture and held-out downstream tasks, built from the facts table.

Three skills, each with reference reasoning (the Densing Law's conditional loss scores reasoning + answer):

- `facts`: 4-way multiple-choice questions about countries (capital, continent, currency); the facts are
  stated in the pretraining text, the question format only for the training half of the countries;
- `twohop`: "the capital of the country city X is in", answered with a two-step chain; chains for the
  training half of the cities are in the pretraining text, the test cities' single facts only;
- `arith`: three-number additions/subtractions answered step by step; test triples never occur in training.

`build_material` writes `synthetic_{train,valid}.txt` (pretraining documents, one per blank-line-separated
paragraph; the valid split holds 5% of them) and `tasks/*.jsonl` (the test items). Everything is
deterministic in `seed`.
"""

from __future__ import annotations

import json
import random
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from densa.data.facts import Fact
from densa.errors import DataError

RELATIONS = ("capital", "continent", "currency")
STATEMENTS = {
    "capital": ("The capital of {s} is {o}.", "{o} is the capital of {s}.", "{s} has its capital in {o}."),
    "continent": ("{s} is in {o}.", "{s} lies in {o}.", "The country {s} is part of {o}."),
    "currency": ("The currency of {s} is the {o}.", "In {s} people pay with the {o}.", "{s} uses the {o}."),
    "country": ("{s} is a city in {o}.", "The city {s} lies in {o}.", "{s} is in {o}."),
}
QUESTIONS = {
    "capital": "What is the capital of {s}?",
    "continent": "On which continent is {s}?",
    "currency": "What is the currency of {s}?",
}
REASONS = {r: STATEMENTS[r][0] for r in STATEMENTS}
LETTERS = "ABCD"


@dataclass(frozen=True)
class Item:
    """One task instance: `instruction` → `output` (reasoning + answer); accuracy is scored on `answer`
    after `acc_context` (teacher-forced reasoning), or over `choices` when given."""

    instruction: str
    output: str
    acc_context: str
    answer: str
    choices: tuple[str, ...] = ()
    gold: int = -1

    def to_dict(self) -> dict:
        d = {"instruction": self.instruction, "output": self.output, "acc_context": self.acc_context}
        d["answer"] = self.answer
        if self.choices:
            d |= {"choices": list(self.choices), "gold": self.gold}
        return d


def _held_out(key: str, fraction: float = 0.5) -> bool:
    return zlib.crc32(key.encode()) % 1000 < fraction * 1000


def mc_item(subject: str, relation: str, answer: str, pool: Sequence[str], rng: random.Random) -> Item:
    wrong = rng.sample(sorted(set(pool) - {answer}), 3)
    options = wrong + [answer]
    rng.shuffle(options)
    gold = options.index(answer)
    listed = "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(options))
    instruction = f"Question: {QUESTIONS[relation].format(s=subject)}\n{listed}\nAnswer:"
    reason = REASONS[relation].format(s=subject, o=answer)
    stem = reason[: reason.rindex(answer)].rstrip()
    output = f"{reason} The answer is {LETTERS[gold]}."
    return Item(instruction, output, f"{instruction} {stem}", answer, tuple(options), gold)


def twohop_item(city: str, country: str, capital: str) -> Item:
    instruction = f"Question: What is the capital of the country that {city} is in?\nAnswer:"
    chain = f"{city} is a city in {country}. The capital of {country} is {capital}."
    return Item(
        instruction, f"{chain} The answer is {capital}.", f"{instruction} {chain} The answer is", capital
    )


def arith_item(a: int, b: int, c: int, ops: tuple[str, str]) -> Item:
    first = a + b if ops[0] == "+" else a - b
    final = first + c if ops[1] == "+" else first - c
    instruction = f"Question: Compute {a} {ops[0]} {b} {ops[1]} {c}.\nAnswer:"
    chain = f"{a} {ops[0]} {b} = {first}. {first} {ops[1]} {c} = {final}."
    return Item(
        instruction, f"{chain} The answer is {final}.", f"{instruction} {chain} The answer is", str(final)
    )


def _arith_problems() -> list[tuple[int, int, int, tuple[str, str]]]:
    out = []
    for a in range(2, 30):
        for b in range(2, 20):
            for c in range(2, 20):
                for ops in (("+", "+"), ("+", "-"), ("-", "+"), ("-", "-")):
                    first = a + b if ops[0] == "+" else a - b
                    final = first + c if ops[1] == "+" else first - c
                    if first >= 0 and 0 <= final < 100:
                        out.append((a, b, c, ops))
    return out


def build_material(
    facts: Sequence[Fact], out_dir: str | Path, *, seed: int = 0, n_test: int = 100, n_cities: int = 400
) -> dict[str, int]:
    """Write `out_dir/synthetic_{train,valid}.txt` and `out_dir/tasks/{facts,twohop,arith}.jsonl`; returns
    counts."""
    rng = random.Random(seed)
    by_rel: dict[str, dict[str, str]] = {r: {} for r in (*RELATIONS, "country")}
    for f in facts:
        if f.relation in by_rel and (f.relation != "continent" or f.subject_kind == "country"):
            by_rel[f.relation].setdefault(f.subject, f.object)
    countries = sorted(set(by_rel["capital"]) & set(by_rel["continent"]) & set(by_rel["currency"]))
    cities = [c for c, k in by_rel["country"].items() if k in by_rel["capital"]][:n_cities]
    if len(countries) < 40 or len(cities) < 40:
        raise DataError(
            f"facts table too small: {len(countries)} countries, {len(cities)} cities (need ≥ 40)"
        )
    lines: list[str] = []
    for rel in RELATIONS:
        for s in countries:
            lines += [t.format(s=s, o=by_rel[rel][s]) for t in STATEMENTS[rel]]
    for city in cities:
        lines += [t.format(s=city, o=by_rel["country"][city]) for t in STATEMENTS["country"]]
    pools = {r: sorted(set(by_rel[r].values())) for r in RELATIONS}
    tests: dict[str, list[Item]] = {"facts": [], "twohop": [], "arith": []}
    for s in countries:
        for rel in RELATIONS:
            item = mc_item(s, rel, by_rel[rel][s], pools[rel], rng)
            if _held_out(f"{s}/{rel}"):
                tests["facts"].append(item)
            else:
                lines += [f"{item.instruction} {item.output}"] * 2
    for city in cities:
        country = by_rel["country"][city]
        item = twohop_item(city, country, by_rel["capital"][country])
        (
            tests["twohop"].append(item)
            if _held_out(city)
            else lines.extend([f"{item.instruction} {item.output}"] * 2)
        )
    problems = _arith_problems()
    rng.shuffle(problems)
    for a, b, c, ops in problems[:n_test]:
        tests["arith"].append(arith_item(a, b, c, ops))
    for a, b, c, ops in problems[n_test : n_test + 6000]:
        item = arith_item(a, b, c, ops)
        lines.append(f"{item.instruction} {item.output}")
    rng.shuffle(lines)
    docs = ["\n".join(lines[i : i + 16]) for i in range(0, len(lines), 16)]
    out = Path(out_dir)
    (out / "tasks").mkdir(parents=True, exist_ok=True)
    n_valid = max(1, len(docs) // 20)
    (out / "synthetic_train.txt").write_text("\n\n".join(docs[n_valid:]) + "\n", encoding="utf-8")
    (out / "synthetic_valid.txt").write_text("\n\n".join(docs[:n_valid]) + "\n", encoding="utf-8")
    counts = {"pretrain_lines": len(lines)}
    for name, items in tests.items():
        rng.shuffle(items)
        items = items[:n_test]
        text = "".join(json.dumps(i.to_dict(), ensure_ascii=False) + "\n" for i in items)
        (out / "tasks" / f"{name}.jsonl").write_text(text, encoding="utf-8")
        counts[name] = len(items)
    return counts
