"""A notebook of edits: natural-language statements with ids, persisted atomically as JSONL.

One line per note: `{"id": "n000001", "text": "The capital of France is Rome."}` (extra keys, e.g.
the request an edit came from, are kept). Every change rewrites the whole file into a temporary
sibling and renames it into place, so a failed write leaves the previous notebook intact.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from densa.errors import DensaError
from densa.outputs import write_text_atomic


class NotebookError(DensaError):
    """A notebook file or note that cannot be used as given."""


@dataclass(frozen=True)
class Note:
    id: str
    text: str
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({"id": self.id, "text": self.text, **self.meta}, ensure_ascii=False)


class Notebook:
    """Edits as notes, in insertion order. `path=None` keeps them in memory only."""

    def __init__(self, notes: Iterable[Note] = (), path: str | os.PathLike | None = None) -> None:
        self._notes: dict[str, Note] = {}
        for note in notes:
            self._notes[note.id] = note
        self.path = Path(path) if path is not None else None
        self._next = 1 + max((int(i[1:]) for i in self._notes if i[1:].isdigit()), default=0)

    # -- reading --------------------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | os.PathLike, create: bool = False) -> Notebook:
        """Read a JSONL notebook; `create=True` starts an empty one when the file does not exist."""
        path = Path(path)
        if not path.exists():
            if create:
                return cls(path=path)
            raise NotebookError(f"{path}: no such notebook (create it with `densa edit add`)")
        if path.is_dir():
            raise NotebookError(f"{path}: is a folder, expected a JSONL notebook file")
        raw = path.read_bytes()
        notes = []
        for n, line in enumerate(raw.split(b"\n"), 1):
            if not line.strip():
                continue
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as err:
                raise NotebookError(
                    f"{path}:{n}: not valid UTF-8 ({err.reason} at byte {err.start})"
                ) from None
            try:
                record = json.loads(text)
            except json.JSONDecodeError as err:
                raise NotebookError(f"{path}:{n}: not valid JSON ({err.msg})") from None
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise NotebookError(f"{path}:{n}: a note needs a string 'text' (and optionally an 'id')")
            if not record["text"].strip():
                raise NotebookError(f"{path}:{n}: empty note text")
            note_id = str(record.pop("id", f"n{n:06d}"))
            text_ = record.pop("text")
            if any(note.id == note_id for note in notes):
                raise NotebookError(f"{path}:{n}: duplicate note id {note_id!r}")
            notes.append(Note(note_id, text_, record))
        return cls(notes, path=path)

    def __len__(self) -> int:
        return len(self._notes)

    def __iter__(self) -> Iterator[Note]:
        return iter(self._notes.values())

    def __getitem__(self, note_id: str) -> Note:
        try:
            return self._notes[note_id]
        except KeyError:
            raise NotebookError(f"no note with id {note_id!r}") from None

    @property
    def notes(self) -> list[Note]:
        return list(self._notes.values())

    @property
    def texts(self) -> list[str]:
        return [n.text for n in self._notes.values()]

    # -- editing --------------------------------------------------------------------------------------

    def add(self, text: str, save: bool = True, **meta: Any) -> Note:
        if not isinstance(text, str) or not text.strip():
            raise NotebookError("a note must be a non-empty string")
        note = Note(f"n{self._next:06d}", text.strip(), dict(meta))
        self._next += 1
        self._notes[note.id] = note
        if save:
            self._save_or_undo(lambda: self._notes.pop(note.id))
        return note

    def add_many(self, texts: Iterable[str], **meta: Any) -> list[Note]:
        added = [self.add(t, save=False, **meta) for t in texts]

        def undo() -> None:
            for note in added:
                self._notes.pop(note.id)

        self._save_or_undo(undo)
        return added

    def remove(self, note_id: str) -> Note:
        note = self[note_id]
        del self._notes[note_id]
        self._save_or_undo(lambda: self._notes.__setitem__(note_id, note))
        return note

    def _save_or_undo(self, undo) -> None:
        try:
            self.save()
        except BaseException:
            undo()
            raise

    def restore(self, notes: Iterable[Note]) -> None:
        """Replace the notes in memory (an editor undoing edits); the file is not touched."""
        self._notes = {note.id: note for note in notes}

    def save(self, path: str | os.PathLike | None = None) -> None:
        """Write atomically (temporary sibling, fsync, rename); a failure leaves the old file intact."""
        target = Path(path) if path is not None else self.path
        if target is None:
            return
        write_text_atomic(target, "".join(note.to_json() + "\n" for note in self._notes.values()))
