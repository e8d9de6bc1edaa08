"""The reader's prompts (EREN, after FLAN's SQuAD-v2 template) and how answers are normalised.

`READ` lets the reader abstain: it must answer only from the notes and say `ABSTAIN` when none of
them answers the question. `ONE_STEP` is the same prompt without that option (the in-context editing
baseline, which always answers from whatever was retrieved). `CLOSED_BOOK` asks the model's own
knowledge: EREN's fallback when the reader abstains.

The instruction data uses these wordings and a few variants (`READ_VARIANTS`) so the reader does not
overfit one phrasing; evaluation uses the canonical ones.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence

ABSTAIN = "unanswerable"

READ = (
    'Read this and answer the question. If the question is unanswerable, say "unanswerable".'
    "\n\n{context}\n\n{question}"
)
ONE_STEP = "Read this and answer the question.\n\n{context}\n\n{question}"
CLOSED_BOOK = "Please answer this question: {question}"

READ_VARIANTS = (
    READ,
    "{context}\n\nAnswer the question using only the notes above."
    ' If they do not answer it, say "unanswerable".\n\n{question}',
    "Notes:\n{context}\n\nQuestion: {question}\n"
    'Answer from the notes, or reply "unanswerable" if they do not contain the answer.',
    "Here are some notes.\n{context}\n\nBased on these notes: {question}"
    ' (If the notes do not say, answer "unanswerable".)',
)
CLOSED_BOOK_VARIANTS = (
    CLOSED_BOOK,
    "Answer briefly: {question}",
    "{question} Give a short answer.",
)


def context_of(notes: Sequence[str]) -> str:
    """Notes one per line, each ending with a period (as EREN joins them)."""
    return "\n".join(n.rstrip().rstrip(".") + "." for n in notes)


def read_prompt(
    question: str, notes: Sequence[str], abstain: bool = True, template: str | None = None
) -> str:
    template = template or (READ if abstain else ONE_STEP)
    return template.format(context=context_of(notes), question=question.strip())


def closed_book_prompt(question: str, template: str = CLOSED_BOOK) -> str:
    return template.format(question=question.strip())


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans({c: " " for c in string.punctuation if c not in "+."})


def normalize(text: str) -> str:
    """Lowercase, drop punctuation (keeping '+' and '.', which calling codes and domains use), articles
    and extra whitespace; a trailing period is dropped (SQuAD-style answer normalisation)."""
    text = text.strip().lower().translate(_PUNCT)
    text = _ARTICLES.sub(" ", text)
    text = " ".join(text.split())
    return text.rstrip(".").strip()


def is_abstention(answer: str) -> bool:
    return normalize(answer) in (ABSTAIN, f"{ABSTAIN}.")


def matches(answer: str, target: str) -> bool:
    """Exact match after normalisation, or the target as a whole-word span of a sentence answer
    ("The capital of France is Paris." matches "Paris")."""
    a, t = normalize(answer), normalize(target)
    if not t:
        return False
    return a == t or re.search(rf"(^|\s){re.escape(t)}($|\s)", a) is not None
