"""Function probes: token- and sequence-level labels for three families of functions.

- linguistic: each token's part of speech (universal tags from a spaCy English pipeline installed from
  PyPI, see `spacy_tag`), one-vs-rest per tag, on sentences from the three corpora below;
- knowledge: facts from `densa.data.facts` written as template sentences, three templates per relation
  used in turn, the object last ("The capital of France is Paris."); the example is the position that
  predicts the object's first token, labelled by relation; up to FACTS_PER_RELATION facts per relation
  (version 1 had one template and 100 facts, of which the benchmark's perturbation used 12);
- semantic: the genre of a short document (Shakespeare, Python documentation, WordNet glosses, from
  `densa.data.fetch`); the example is the whole sequence (activations averaged over its tokens).

The text-level material (sentences, tags, facts, documents) is built once into
`<cache>/probes/v{VERSION}/text.json`; `build_probes` tokenizes it for one tokenizer into a folder with
`probes.json` (format, version, tokenizer fingerprint, labels) and `sequences.jsonl`. Analyses refuse
probes whose tokenizer fingerprint differs from the model's.
"""

from __future__ import annotations

import json
import os
import random
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from densa.analysis.errors import AnalysisError
from densa.data.tokenizer import Tokenizer
from densa.outputs import write_text_atomic

FORMAT = "densa-probes"
VERSION = 2
FAMILIES = ("linguistic", "knowledge", "semantic")
GENRES = ("shakespeare", "python-docs", "wordnet")
TEMPLATES = {
    "capital": ("The capital of {s} is", "The capital city of {s} is", "{s} has its seat of government in"),
    "continent": (
        "{s} is located in the continent of",
        "{s} lies in",
        "The continent that {s} belongs to is",
    ),
    "currency": (
        "The currency of {s} is the",
        "In {s}, people pay with the",
        "The official currency of {s} is",
    ),
    "demonym": ("A person from {s} is called", "Someone born in {s} is", "People from {s} are called"),
    "country": (
        "{s} is a city in the country of",
        "The city of {s} is located in",
        "{s} is a city in",
    ),
    "calling_code": (
        "The international calling code of {s} is",
        "To phone {s} from abroad, dial",
        "The telephone country code of {s} is",
    ),
    "tld": (
        "The internet domain of {s} is",
        "Websites in {s} end in",
        "The country code top-level domain of {s} is",
    ),
}
"""Prompts per relation (the object follows after a space); facts use them in turn."""
FACTS_PER_RELATION = 200
DOCS_PER_GENRE = 60
DOC_CHARS = 400
WORDS_PER_GENRE = 1500
MIN_TAG_WORDS = 100
"""A part-of-speech tag becomes a label when the tagged text has at least this many words with it."""
MAX_TOKENS = 64


@dataclass(frozen=True)
class ProbeSequence:
    family: str
    ids: list[int]
    examples: list[tuple[int, int]]
    """(token position, label index); position -1 is the whole sequence; label -1 is negative for all."""


@dataclass(frozen=True)
class Probes:
    meta: dict
    sequences: list[ProbeSequence] = field(repr=False)

    def labels(self, family: str) -> list[str]:
        return list(self.meta["labels"][family])

    def family(self, family: str) -> list[ProbeSequence]:
        return [s for s in self.sequences if s.family == family]

    @property
    def families(self) -> list[str]:
        return [f for f in FAMILIES if f in self.meta["labels"]]


def _clean(text: str) -> str:
    """ASCII, single spaces: what every tokenizer decodes back to the same string."""
    return re.sub(r"\s+", " ", text.encode("ascii", "ignore").decode()).strip()


def _windows(files: list[Path], n: int, chars: int, rng: random.Random) -> list[str]:
    """`n` cleaned windows of about `chars` characters from random places in random files, word-aligned."""
    out = []
    for _ in range(n * 20):
        if len(out) == n:
            break
        text = _clean(rng.choice(files).read_text(encoding="utf-8", errors="replace"))
        if len(text) < 2 * chars:
            continue
        start = text.find(" ", rng.randrange(len(text) - chars)) + 1
        window = text[start : start + chars].rsplit(" ", 1)[0]
        if len(window) > chars // 2:
            out.append(window)
    return out


def text_material(cache: Path, seed: int = 0) -> dict:
    """The tokenizer-independent probe material, built once per cache and version."""
    path = cache / "probes" / f"v{VERSION}" / "text.json"
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    from densa.analysis.spacy_tag import tag_texts
    from densa.data.facts import fetch_facts, read_facts
    from densa.data.fetch import fetch_corpus

    rng = random.Random(seed)
    files = {g: sorted(p for p in fetch_corpus(g, cache / "corpora").glob("*.txt")) for g in GENRES}
    semantic = [
        {"text": t, "genre": g} for g in GENRES for t in _windows(files[g], DOCS_PER_GENRE, DOC_CHARS, rng)
    ]
    linguistic = []
    for genre in GENRES:
        words, windows = 0, _windows(files[genre], 60, 1000, rng)
        for window, doc in zip(windows, tag_texts(windows, cache), strict=True):
            for sent in doc:
                if words >= WORDS_PER_GENRE or not 6 <= len(sent) <= 40:
                    continue
                lo, hi = sent[0][0], sent[-1][1]
                tags = [(s - lo, e - lo, pos) for s, e, pos in sent]
                linguistic.append({"text": window[lo:hi], "words": tags, "genre": genre})
                words += len(sent)
    knowledge = knowledge_material(read_facts(fetch_facts(cache)), rng)
    material = {"version": VERSION, "seed": seed, "linguistic": linguistic, "knowledge": knowledge}
    material["semantic"] = semantic
    write_text_atomic(path, json.dumps(material) + "\n")
    return material


def knowledge_material(
    facts: Iterable, rng: random.Random, per_relation: int = FACTS_PER_RELATION
) -> list[dict]:
    """Fact sentences: up to `per_relation` sampled facts per relation (ASCII only), the i-th written
    with the relation's template i mod T; `object_start` is the object's character offset."""
    by_relation: dict[str, list] = {}
    for fact in facts:
        if fact.relation in TEMPLATES and fact.subject.isascii() and fact.object.isascii():
            by_relation.setdefault(fact.relation, []).append(fact)
    out = []
    for relation, templates in TEMPLATES.items():
        pool = by_relation.get(relation, [])
        for i, fact in enumerate(rng.sample(pool, min(per_relation, len(pool)))):
            prompt = _clean(templates[i % len(templates)].format(s=fact.subject))
            out.append(
                {
                    "text": f"{prompt} {_clean(fact.object)}.",
                    "relation": relation,
                    "template": i % len(templates),
                    "object_start": len(prompt) + 1,
                }
            )
    return out


def token_starts(tokenizer: Tokenizer, text: str) -> tuple[list[int], list[int]] | None:
    """(ids, char offset of each token's first non-space character), or None when the tokens do not
    decode back to `text` (then character labels cannot be placed on tokens)."""
    ids = tokenizer.encode(text)
    if tokenizer.decode(ids) != text:
        return None
    starts, prev = [], 0
    for k in range(len(ids)):
        end = len(tokenizer.decode(ids[: k + 1]))
        piece = text[prev:end]
        starts.append(prev + len(piece) - len(piece.lstrip(" ")))
        prev = end
    return ids, starts


def _word_index(words: list, char: int) -> int:
    for i, (s, e, _pos) in enumerate(words):
        if s <= char < e:
            return i
    return -1


def _sequences(material: dict, tokenizer: Tokenizer, tags: list[str]) -> tuple[list[ProbeSequence], int]:
    seqs, dropped = [], 0
    tag_index = {t: i for i, t in enumerate(tags)}
    for item in material["linguistic"]:
        aligned = token_starts(tokenizer, item["text"])
        if aligned is None:
            dropped += 1
            continue
        ids, starts = aligned[0][:MAX_TOKENS], aligned[1][:MAX_TOKENS]
        examples = []
        for pos, char in enumerate(starts):
            w = _word_index(item["words"], char)
            if w >= 0:
                examples.append((pos, tag_index.get(item["words"][w][2], -1)))
        seqs.append(ProbeSequence("linguistic", ids, examples))
    relations = list(TEMPLATES)
    for item in material["knowledge"]:
        aligned = token_starts(tokenizer, item["text"])
        if aligned is None:
            dropped += 1
            continue
        ids, starts = aligned
        first = next(k for k, c in enumerate(starts) if c >= item["object_start"])
        if first == 0:
            dropped += 1
            continue
        seqs.append(ProbeSequence("knowledge", ids, [(first - 1, relations.index(item["relation"]))]))
    for item in material["semantic"]:
        ids = tokenizer.encode(item["text"])[:MAX_TOKENS]
        seqs.append(ProbeSequence("semantic", ids, [(-1, GENRES.index(item["genre"]))]))
    return seqs, dropped


def build_probes(
    tokenizer: Tokenizer, out: str | os.PathLike, *, cache: str | os.PathLike | None = None, seed: int = 0
) -> Path:
    """Write `out/probes.json` + `out/sequences.jsonl` for `tokenizer`; returns `out`."""
    from densa.data.fetch import cache_root

    material = text_material(Path(cache).expanduser() if cache else cache_root(), seed)
    counts: dict[str, int] = {}
    for item in material["linguistic"]:
        for _s, _e, pos in item["words"]:
            counts[pos] = counts.get(pos, 0) + 1
    tags = sorted(t for t, n in counts.items() if n >= MIN_TAG_WORDS)
    seqs, dropped = _sequences(material, tokenizer, tags)
    labels = {"linguistic": tags, "knowledge": list(TEMPLATES), "semantic": list(GENRES)}
    positives = {f: [0] * len(labels[f]) for f in FAMILIES}
    for s in seqs:
        for _pos, label in s.examples:
            if label >= 0:
                positives[s.family][label] += 1
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "seed": seed,
        "tokenizer": {"path": str(tokenizer.path), "fingerprint": tokenizer.fingerprint},
        "vocab_size": tokenizer.vocab_size,
        "levels": {"linguistic": "token", "knowledge": "token", "semantic": "sequence"},
        "labels": labels,
        "positives": {f: dict(zip(labels[f], positives[f], strict=True)) for f in FAMILIES},
        "sequences": {f: sum(s.family == f for s in seqs) for f in FAMILIES},
        "tokens": {f: sum(len(s.ids) for s in seqs if s.family == f) for f in FAMILIES},
        "dropped_texts": dropped,
    }
    out = Path(out)
    lines = "".join(
        json.dumps({"family": s.family, "ids": s.ids, "examples": s.examples}) + "\n" for s in seqs
    )
    write_text_atomic(out / "sequences.jsonl", lines)
    write_text_atomic(out / "probes.json", json.dumps(meta, indent=2) + "\n")
    return out


def load_probes(path: str | os.PathLike) -> Probes:
    """Probes written by `build_probes`; errors name the file and what is wrong."""
    folder = Path(path)
    meta_path = folder / "probes.json"
    if not meta_path.is_file():
        raise AnalysisError(f"{folder}: no probes.json (build probes with `densa analyze probes`)")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise AnalysisError(
            f"{meta_path}: format {meta.get('format')!r} version {meta.get('version')!r}, expected "
            f"{FORMAT!r} version {VERSION}: rebuild the probes"
        )
    seqs = []
    with open(folder / "sequences.jsonl", encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            try:
                r = json.loads(line)
                seqs.append(ProbeSequence(r["family"], r["ids"], [tuple(e) for e in r["examples"]]))
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise AnalysisError(
                    f"{folder / 'sequences.jsonl'}:{n}: not a probe sequence ({err})"
                ) from None
    return Probes(meta, seqs)


def check_tokenizer(
    probes: Probes, fingerprint: str | None, vocab_size: int, where: str, tokenizer: str | None = None
) -> None:
    """Refuse probes tokenized for another vocabulary than the model's (`tokenizer`: the model's, for
    the message; default `where`)."""
    tok = probes.meta["tokenizer"]
    if fingerprint is not None and fingerprint != tok["fingerprint"]:
        raise AnalysisError(
            f"probes were tokenized with {tok['path']} (fingerprint {tok['fingerprint'][:12]}), but "
            f"{where} uses a different tokenizer (fingerprint {fingerprint[:12]}): rebuild them with "
            f"`densa analyze probes --tokenizer {tokenizer or where} --out DIR`"
        )
    top = max((max(s.ids) for s in probes.sequences if s.ids), default=-1)
    if top >= vocab_size:
        raise AnalysisError(f"probes contain token id {top} but {where} has a vocabulary of {vocab_size}")
