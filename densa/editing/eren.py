"""Answering questions with a notebook: EREN (read, or say unanswerable, then fall back) and one-step reading.

    EREN      notes = top-k(question); a = reader(READ(notes, question))
              if a == "unanswerable": a = reader(CLOSED_BOOK(question))        # fallback
    ONE_STEP  a = reader(ONE_STEP(notes, question))                            # no abstain option
    closed    a = reader(CLOSED_BOOK(question))                                # no notebook (or empty)

Several retrieved notes are shown together, so the reader can compose them (2-hop questions).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from densa.editing.notebook import Notebook
from densa.editing.prompts import closed_book_prompt, is_abstention, read_prompt
from densa.editing.reader import Reader
from densa.editing.retriever import BM25Retriever, DenseRetriever, Hit

Mode = Literal["eren", "one_step", "closed_book"]


@dataclass
class Answer:
    question: str
    text: str
    """The final answer."""
    source: Literal["notes", "closed_book"]
    notes: list[Hit] = field(default_factory=list)
    """The notes shown to the reader (best first)."""
    reader_output: str | None = None
    """What the reader said over the notes (before any fallback)."""

    def to_dict(self) -> dict:
        return {
            "question": self.question,
            "answer": self.text,
            "source": self.source,
            "reader_output": self.reader_output,
            "notes": [{"id": h.note.id, "text": h.note.text, "score": round(h.score, 4)} for h in self.notes],
        }


HOP_SLOTS = 2
"""Places of the top-k that a second retrieval hop may fill."""


def _merge(first: list[Hit], second: list[Hit], k: int) -> list[Hit]:
    keep = max(k - HOP_SLOTS, 1)
    out = first[:keep]
    seen = {h.note.id for h in out}
    for hit in [*second, *first[keep:]]:
        if len(out) == k:
            break
        if hit.note.id not in seen:
            out.append(hit)
            seen.add(hit.note.id)
    return out


class NoteReader:
    """A reader, a retriever over a notebook, and the answering procedure `mode`."""

    def __init__(
        self,
        reader: Reader,
        retriever: DenseRetriever | BM25Retriever,
        notebook: Notebook,
        top_k: int = 5,
        mode: Mode = "eren",
        fallback: bool = True,
        hops: int = 1,
    ) -> None:
        self.reader, self.retriever, self.notebook = reader, retriever, notebook
        self.top_k, self.mode, self.fallback, self.hops = top_k, mode, fallback, hops
        self.retriever.index(notebook.notes)

    def sync(self) -> None:
        """Index notes appended to the notebook since the last call; any other change re-indexes."""
        notes, indexed = self.notebook.notes, [n.id for n in self.retriever.notes]
        if [n.id for n in notes[: len(indexed)]] == indexed:
            if len(notes) > len(indexed):
                self.retriever.add(notes[len(indexed) :])
        else:
            self.retriever.index(notes)

    def retrieve(self, questions: Sequence[str]) -> list[list[Hit]]:
        """Top-k notes per question. With `hops=2` a second search runs on the question plus its best
        note, and its new notes take the last `HOP_SLOTS` places: the second hop of "the capital of the
        country where X is" names a country that only the first note mentions."""
        hits = self.retriever.search(questions, self.top_k)
        if self.hops < 2 or self.top_k < 2:
            return hits
        expanded = [f"{q} {hs[0].note.text}" if hs else q for q, hs in zip(questions, hits, strict=True)]
        second = self.retriever.search(expanded, self.top_k)
        return [_merge(a, b, self.top_k) for a, b in zip(hits, second, strict=True)]

    def ask(self, questions: Sequence[str]) -> list[Answer]:
        questions = list(questions)
        if self.mode == "closed_book" or len(self.notebook) == 0:
            texts = self.reader.answer([closed_book_prompt(q) for q in questions])
            return [Answer(q, t, "closed_book") for q, t in zip(questions, texts, strict=True)]
        self.sync()
        hits = self.retrieve(questions)
        abstain = self.mode == "eren"
        prompts = [
            read_prompt(q, [h.note.text for h in hs], abstain=abstain)
            for q, hs in zip(questions, hits, strict=True)
        ]
        outputs = self.reader.answer(prompts)
        answers = [
            Answer(q, out, "notes", hs, out) for q, out, hs in zip(questions, outputs, hits, strict=True)
        ]
        if abstain and self.fallback:
            todo = [i for i, a in enumerate(answers) if is_abstention(a.text)]
            if todo:
                closed = self.reader.answer([closed_book_prompt(questions[i]) for i in todo])
                for i, text in zip(todo, closed, strict=True):
                    answers[i].text, answers[i].source = text, "closed_book"
        return answers
