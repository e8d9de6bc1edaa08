"""The notebook: ids, persistence read back, atomic writes, and clear errors for bad files."""

from __future__ import annotations

import os

import pytest

from densa.editing.notebook import Notebook, NotebookError


def test_add_list_remove_round_trip(tmp_path):
    path = tmp_path / "notes.jsonl"
    book = Notebook.load(path, create=True)
    a = book.add("The capital of France is Lima.")
    b, c = book.add_many(["Lyon is a city in Japan.", "People from Peru are called Kenyan."])
    assert [a.id, b.id, c.id] == ["n000001", "n000002", "n000003"]
    book.remove(b.id)
    again = Notebook.load(path)
    assert [(n.id, n.text) for n in again] == [
        ("n000001", "The capital of France is Lima."),
        ("n000003", "People from Peru are called Kenyan."),
    ]
    assert again.add("Osaka is a city in Peru.").id == "n000004"  # ids are never reused
    assert (
        path.read_text(encoding="utf-8").splitlines()[0]
        == '{"id": "n000001", "text": "The capital of France is Lima."}'
    )


def test_failed_write_keeps_previous_notebook(tmp_path, monkeypatch):
    path = tmp_path / "notes.jsonl"
    book = Notebook.load(path, create=True)
    book.add("The capital of France is Lima.")
    before = path.read_bytes()

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        book.add("Lyon is a city in Japan.")
    with pytest.raises(OSError):
        book.remove("n000001")
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [n.text for n in book] == ["The capital of France is Lima."]  # memory rolled back too
    assert [p.name for p in tmp_path.iterdir()] == ["notes.jsonl"]  # no temp file left


def test_bad_notebook_files_name_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"id": "n1", "text": "fine"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(NotebookError, match=r"bad.jsonl:2: not valid UTF-8"):
        Notebook.load(bad)
    bad.write_text('{"id": "n1", "text": "fine"}\n{"txt": "x"}\n', encoding="utf-8")
    with pytest.raises(NotebookError, match=r"bad.jsonl:2: a note needs a string 'text'"):
        Notebook.load(bad)
    bad.write_text('{"id": "n1", "text": "a"}\n{"id": "n1", "text": "b"}\n', encoding="utf-8")
    with pytest.raises(NotebookError, match=r"bad.jsonl:2: duplicate note id 'n1'"):
        Notebook.load(bad)
    with pytest.raises(NotebookError, match="no such notebook"):
        Notebook.load(tmp_path / "missing.jsonl")
    with pytest.raises(NotebookError, match="is a folder"):
        Notebook.load(tmp_path)
    with pytest.raises(NotebookError, match="non-empty string"):
        Notebook().add("   ")
