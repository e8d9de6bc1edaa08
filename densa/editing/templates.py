"""Natural-language templates per relation: how a fact is stated (a note) and asked (a question).

Question templates are split: the first ones are seen in the instruction data (`train`), the rest are
held out and only asked at evaluation (`heldout`), so paraphrase success is measured on wordings the
reader never trained on. Relations in `SFT_RELATIONS` feed the instruction data; the others
(`currency`, `demonym`) are held out from it entirely.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RelationTemplates:
    statements: tuple[str, ...]
    train_questions: tuple[str, ...]
    heldout_questions: tuple[str, ...]

    def statement(self, subject: str, obj: str, i: int = 0) -> str:
        return self.statements[i % len(self.statements)].format(s=subject, o=obj)

    def question(self, subject: str, i: int = 0, heldout: bool = False) -> str:
        pool = self.heldout_questions if heldout else self.train_questions
        return pool[i % len(pool)].format(s=subject)


TEMPLATES: dict[str, RelationTemplates] = {
    "capital": RelationTemplates(
        ("The capital of {s} is {o}.", "{o} is the capital city of {s}.", "{s}'s capital is {o}."),
        ("What is the capital of {s}?", "Which city is the capital of {s}?", "What city is {s}'s capital?"),
        ("Name the capital city of {s}.", "{s} has its seat of government in which city?"),
    ),
    "continent": RelationTemplates(
        ("{s} is located in {o}.", "{s} lies on the continent of {o}.", "{s} is part of {o}."),
        (
            "On which continent is {s}?",
            "Which continent is {s} located in?",
            "Where is {s}, on what continent?",
        ),
        ("{s} lies on what continent?", "Name the continent where {s} is found."),
    ),
    "country": RelationTemplates(
        ("{s} is a city in {o}.", "The city of {s} is located in {o}.", "{s} lies in the country of {o}."),
        (
            "In which country is {s}?",
            "Which country is the city of {s} in?",
            "{s} is a city in which country?",
        ),
        ("Name the country where the city of {s} lies.", "What country is {s} located in?"),
    ),
    "currency": RelationTemplates(
        (
            "The currency of {s} is the {o}.",
            "{s} uses the {o} as its currency.",
            "In {s} people pay with the {o}.",
        ),
        ("What is the currency of {s}?", "Which currency is used in {s}?"),
        ("What money do people use in {s}?", "Name the official currency of {s}."),
    ),
    "demonym": RelationTemplates(
        ("People from {s} are called {o}.", "A person from {s} is {o}.", "The demonym of {s} is {o}."),
        ("What are people from {s} called?", "What is the demonym of {s}?"),
        ("What do you call a person from {s}?", "How are the inhabitants of {s} called?"),
    ),
    "calling_code": RelationTemplates(
        ("The international calling code of {s} is {o}.", "To phone {s}, dial {o}."),
        ("What is the calling code of {s}?", "Which international dialing code does {s} use?"),
        ("What do you dial to call {s}?",),
    ),
    "tld": RelationTemplates(
        ("The internet domain of {s} is {o}.", "Websites from {s} end in {o}."),
        ("What is the top-level domain of {s}?", "Which internet domain belongs to {s}?"),
        ("Websites of {s} end in what domain?",),
    ),
}

SFT_RELATIONS = ("capital", "continent", "country", "calling_code", "tld")
TWO_HOP = {
    # (first relation, second relation): question about the object of the second hop
    ("country", "capital"): "What is the capital of the country where {s} is located?",
    ("capital", "continent"): "On which continent is the capital of {s}?",
}
