"""One small tokenizer interface over SentencePiece models and local HF tokenizer folders.

Everything downstream (preprocess, SFT, the trainer's manifest check) sees only `Tokenizer`, so the
backend can change without touching them. `encode` never adds BOS/EOS: callers decide.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Protocol, runtime_checkable

from densa.errors import DataError


@runtime_checkable
class Tokenizer(Protocol):
    """What densa needs from a tokenizer."""

    path: str
    vocab_size: int
    bos_id: int | None
    eos_id: int | None
    pad_id: int | None

    def encode(self, text: str) -> list[int]: ...
    def encode_batch(self, texts: list[str]) -> list[list[int]]: ...
    def decode(self, ids: list[int]) -> str: ...
    def id_to_piece(self, i: int) -> str: ...

    @property
    def fingerprint(self) -> str: ...


def vocab_fingerprint(pieces: list[str], bos: int | None, eos: int | None, pad: int | None) -> str:
    """sha256 of the id -> token table and special ids.

    It identifies what each embedding row means, which is what a model depends on; it is independent
    of the file format, so a SentencePiece model and its HF export share one fingerprint.
    """
    blob = json.dumps({"pieces": pieces, "bos": bos, "eos": eos, "pad": pad}, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class SentencePieceTokenizer:
    """A `tokenizer.model` from `train_sentencepiece` (or any SentencePiece model)."""

    def __init__(self, model_path: str | Path) -> None:
        import sentencepiece as spm

        self.path = str(model_path)
        try:
            self.sp = spm.SentencePieceProcessor(model_file=self.path)
        except (OSError, RuntimeError) as err:
            raise DataError(f"cannot load SentencePiece model {model_path}: {err}") from None
        self.vocab_size = self.sp.get_piece_size()
        self.bos_id = self._opt(self.sp.bos_id())
        self.eos_id = self._opt(self.sp.eos_id())
        self.pad_id = self._opt(self.sp.pad_id())
        self._fingerprint: str | None = None

    @staticmethod
    def _opt(i: int) -> int | None:
        return None if i < 0 else i

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.sp.encode(texts)

    def decode(self, ids: list[int]) -> str:
        return self.sp.decode(list(map(int, ids)))

    def id_to_piece(self, i: int) -> str:
        return self.sp.id_to_piece(int(i))

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            pieces = [self.sp.id_to_piece(i) for i in range(self.vocab_size)]
            self._fingerprint = vocab_fingerprint(pieces, self.bos_id, self.eos_id, self.pad_id)
        return self._fingerprint


class HFTokenizer:
    """A local HF tokenizer folder (or a loaded `PreTrainedTokenizerBase`); never touches the hub."""

    def __init__(self, path_or_tokenizer, **kwargs) -> None:
        if isinstance(path_or_tokenizer, str | Path):
            from transformers import AutoTokenizer

            self.path = str(path_or_tokenizer)
            try:
                self.tok = AutoTokenizer.from_pretrained(self.path, local_files_only=True, **kwargs)
            except (OSError, ValueError) as err:
                raise DataError(f"cannot load HF tokenizer from {self.path}: {err}") from None
        else:
            self.tok = path_or_tokenizer
            self.path = str(getattr(self.tok, "name_or_path", ""))
        self.vocab_size = len(self.tok)
        self.bos_id = self.tok.bos_token_id
        self.eos_id = self.tok.eos_token_id
        self.pad_id = self.tok.pad_token_id
        self._fingerprint: str | None = None

    def encode(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.tok(texts, add_special_tokens=False)["input_ids"]

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(list(map(int, ids)))

    def id_to_piece(self, i: int) -> str:
        return self.tok.convert_ids_to_tokens(int(i))

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tok, "chat_template", None))

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            pieces = self.tok.convert_ids_to_tokens(list(range(self.vocab_size)))
            pieces = [p if p is not None else "" for p in pieces]
            self._fingerprint = vocab_fingerprint(pieces, self.bos_id, self.eos_id, self.pad_id)
        return self._fingerprint


def load_tokenizer(path: str | Path) -> Tokenizer:
    """A `.model` file (or a folder with only `tokenizer.model`) -> SentencePiece; an HF folder -> HF."""
    p = Path(path)
    if p.is_file() and p.suffix == ".model":
        return SentencePieceTokenizer(p)
    if p.is_dir():
        if (p / "tokenizer.json").exists() or (p / "tokenizer_config.json").exists():
            return HFTokenizer(p)
        if (p / "tokenizer.model").exists():
            return SentencePieceTokenizer(p / "tokenizer.model")
    raise DataError(
        f"no tokenizer at {path}: expected a SentencePiece .model file or a folder with tokenizer.json "
        "(train one with `densa data train-tokenizer`)"
    )
