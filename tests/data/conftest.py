"""Shared fixtures for the data tests: generated multilingual text and tiny SentencePiece models."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

_WORDS_TEXT = (
    "the quick brown fox jumps over a lazy dog while hello world data token model train "
    "東京 北京 你好 世界 привет мир книга код 123 4567 ! , . ; 😀 🚀 café naïve"
)
WORDS = _WORDS_TEXT.split(" ")


def make_text(n_lines: int = 2000, seed: int = 0) -> str:
    rng = random.Random(seed)
    return (
        "\n".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 15))) for _ in range(n_lines))
        + "\n"
    )


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text(make_text(), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def sp_model(tmp_path_factory, corpus_file) -> Path:
    from densa.data.sp_train import train_sentencepiece

    return train_sentencepiece([corpus_file], tmp_path_factory.mktemp("sp_bpe"), vocab_size=400)


@pytest.fixture(scope="session")
def hf_folder(tmp_path_factory, sp_model) -> Path:
    from densa.data.hf_export import export_sentencepiece_to_hf

    return export_sentencepiece_to_hf(sp_model, tmp_path_factory.mktemp("hf_bpe"))
