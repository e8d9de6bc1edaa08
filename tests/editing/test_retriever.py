"""Retrievers: BM25 ranks pinned on a small notebook; MiniLM (the real encoder from PyPI) finds the note
for paraphrased questions."""

from __future__ import annotations

import pytest
import torch

from densa.editing.notebook import Note
from densa.editing.retriever import BM25Retriever, DenseRetriever, SentenceEncoder, build_retriever
from densa.errors import DataError, DensaError

NOTES = [
    Note("n1", "The capital of France is Lima."),
    Note("n2", "Lyon is a city in Japan."),
    Note("n3", "People from Peru are called Kenyan."),
    Note("n4", "The currency of Chile is the Yen."),
    Note("n5", "France is located in Asia."),
]


def test_bm25_ranks_and_incremental_index():
    full = BM25Retriever()
    full.index(NOTES)
    hits = full.search(["What is the capital of France?", "Which currency is used in Chile?", "zzz"], k=2)
    assert [h.note.id for h in hits[0]] == ["n1", "n5"]
    assert hits[1][0].note.id == "n4"
    assert [h.score for h in hits[2]] == [0.0, 0.0]  # nothing matches: padded, not empty
    inc = BM25Retriever()
    inc.index(NOTES[:2])
    inc.add(NOTES[2:])
    again = inc.search(["What is the capital of France?"], k=2)[0]
    assert [(h.note.id, round(h.score, 6)) for h in again] == [
        (h.note.id, round(h.score, 6)) for h in hits[0]
    ]
    with pytest.raises(DensaError, match="unknown retriever 'tfidf'"):
        build_retriever("tfidf")


@pytest.fixture(scope="module")
def encoder():
    try:
        return SentenceEncoder()
    except DataError as err:  # only an install failure skips
        pytest.skip(str(err))


def test_minilm_finds_notes_for_paraphrases(encoder):
    emb = encoder.encode(["The capital of France is Lima.", "hello"])
    assert emb.shape == (2, 384)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(2), atol=1e-5)
    dense = DenseRetriever(encoder)
    dense.index(NOTES)
    questions = [
        "Name the capital city of France.",
        "What do you call a person from Peru?",
        "What money do people use in Chile?",
        "What country is Lyon located in?",
    ]
    assert [hs[0].note.id for hs in dense.search(questions, k=3)] == ["n1", "n3", "n4", "n2"]
    scores = [h.score for h in dense.search(questions[:1], k=5)[0]]
    assert scores == sorted(scores, reverse=True)
