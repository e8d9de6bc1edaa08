"""Editing by reading notes (EREN): notebook, retrievers, reader, editor, probes and instruction data.

See docs/editing.md.
"""

from densa.editing.editor import Editor, EditorError, EditResult
from densa.editing.eren import Answer, NoteReader
from densa.editing.hparams import EditHParams
from densa.editing.notebook import Note, Notebook, NotebookError
from densa.editing.reader import Reader, ReaderError
from densa.editing.requests import EditRequest, parse_requests
from densa.editing.retriever import BM25Retriever, DenseRetriever, SentenceEncoder, build_retriever

__all__ = [
    "Answer",
    "BM25Retriever",
    "DenseRetriever",
    "EditHParams",
    "EditRequest",
    "EditResult",
    "Editor",
    "EditorError",
    "Note",
    "NoteReader",
    "Notebook",
    "NotebookError",
    "Reader",
    "ReaderError",
    "SentenceEncoder",
    "build_retriever",
    "parse_requests",
]
