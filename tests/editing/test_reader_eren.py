"""The reader (batched = one by one, chat template, clear errors) and the EREN procedure (abstain ->
closed-book fallback, one-step reading, empty notebook) with a scripted reader."""

from __future__ import annotations

import pytest

from densa.editing.eren import NoteReader
from densa.editing.notebook import Notebook
from densa.editing.prompts import CLOSED_BOOK, ONE_STEP, READ
from densa.editing.reader import Reader, ReaderError
from densa.editing.retriever import BM25Retriever


def test_batched_answers_equal_one_by_one(chat_reader_dir):
    prompts = ["What is the capital of France?", "hi", "On which continent is Japan located today?", "Peru"]
    batched = Reader(chat_reader_dir, max_new_tokens=6, batch_size=4).answer(prompts)
    single = Reader(chat_reader_dir, max_new_tokens=6, batch_size=1).answer(prompts)
    assert batched == single  # left padding and the attention mask change nothing


def test_chat_template_is_used_and_required(chat_reader_dir, base_reader_dir):
    chat = Reader(chat_reader_dir)
    assert chat.use_chat
    assert chat.render("hello") == list(
        chat.tokenizer.apply_chat_template(
            [{"role": "user", "content": "hello"}], add_generation_prompt=True, tokenize=True
        )["input_ids"]
    )
    assert not Reader(base_reader_dir).use_chat
    assert Reader(base_reader_dir).render("hello") == chat.tokenizer.encode("hello")
    with pytest.raises(ReaderError, match="reader.chat is 'required' but the tokenizer has no chat template"):
        Reader(base_reader_dir, chat="required")


def test_question_longer_than_context_is_refused(chat_reader_dir):
    reader = Reader(chat_reader_dir, max_new_tokens=16)
    with pytest.raises(
        ReaderError,
        match=r"prompt is \d+ tokens; with max_new_tokens=16 it exceeds the model's context of 256 tokens",
    ):
        reader.answer(["France " * 300])


class ScriptedReader:
    """Answers by rule and records every prompt it was given."""

    def __init__(self, rules):
        self.rules, self.seen = rules, []

    def answer(self, prompts):
        self.seen += list(prompts)
        return [next((out for key, out in self.rules if key in p), "unanswerable") for p in prompts]


NOTES = ["The capital of France is Lima.", "Lyon is a city in Japan.", "People from Peru are called Kenyan."]


def _book():
    book = Notebook()
    book.add_many(NOTES)
    return book


def test_eren_reads_then_falls_back_to_closed_book():
    reader = ScriptedReader(
        [
            ("Please answer this question", "Paris?"),
            ("Lima.\nLyon is a city in Japan.\n\nWhat is the capital of France?", "Lima"),
        ]
    )
    nr = NoteReader(reader, BM25Retriever(), _book(), top_k=2, mode="eren")
    edited, unrelated = nr.ask(["What is the capital of France?", "What is the currency of Chile?"])
    assert (edited.text, edited.source, edited.reader_output) == ("Lima", "notes", "Lima")
    assert edited.notes[0].note.text == NOTES[0] and len(edited.notes) == 2
    assert (unrelated.text, unrelated.source, unrelated.reader_output) == (
        "Paris?",
        "closed_book",
        "unanswerable",
    )
    assert reader.seen[0].startswith(READ.split("{context}")[0])
    assert reader.seen[-1] == CLOSED_BOOK.format(question="What is the currency of Chile?")
    assert len(reader.seen) == 3  # two reads, one fallback


def test_one_step_has_no_abstain_option_and_no_fallback():
    reader = ScriptedReader([])
    nr = NoteReader(reader, BM25Retriever(), _book(), top_k=1, mode="one_step")
    (answer,) = nr.ask(["What is the currency of Chile?"])
    assert answer.source == "notes" and answer.text == "unanswerable"
    assert reader.seen == [
        ONE_STEP.format(context=answer.notes[0].note.text, question="What is the currency of Chile?")
    ]


def test_empty_notebook_answers_closed_book_and_new_notes_are_indexed():
    reader = ScriptedReader([("Please answer", "Paris"), ("Lima", "Lima")])
    book = Notebook()
    nr = NoteReader(reader, BM25Retriever(), book, top_k=3)
    assert nr.ask(["What is the capital of France?"])[0].source == "closed_book"
    book.add("The capital of France is Lima.", save=False)
    (answer,) = nr.ask(["What is the capital of France?"])
    assert (answer.text, answer.source) == ("Lima", "notes")
    book.remove("n000001")
    assert nr.ask(["What is the capital of France?"])[0].source == "closed_book"


def test_second_retrieval_hop_finds_the_bridge_note():
    book = Notebook()
    book.add_many(
        [
            "Penza is a city in Norway.",
            "The capital of France is Lima.",
            "The capital of Peru is Kyoto.",
            "The capital of Chile is Rome.",
            "The capital of Norway is Oslo.",
        ]
    )
    question = ["What is the capital of the country where Penza is located?"]
    one = NoteReader(ScriptedReader([]), BM25Retriever(), book, top_k=3, hops=1).retrieve(question)[0]
    two = NoteReader(ScriptedReader([]), BM25Retriever(), book, top_k=3, hops=2).retrieve(question)[0]
    assert [h.note.id for h in one] == ["n000001", "n000002", "n000003"]
    assert [h.note.id for h in two] == ["n000001", "n000005", "n000002"]  # the hop fills the last places
