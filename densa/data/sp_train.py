"""Train a SentencePiece tokenizer from plain-text files.

Defaults are chosen so that the model can be exported to an HF fast tokenizer that encodes
identically (see `hf_export.py`): byte fallback (no `<unk>` on unseen characters), identity
normalization and kept whitespace (so code and multiple spaces round-trip), digits split.
SentencePiece records every training argument in the model proto (`trainer_spec`); we also write
them to `train_args.json` next to the model so they are readable without protobuf.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from densa.errors import DataError

SP_MODEL_NAME = "tokenizer.model"
DEFAULT_SPECIAL_TOKENS = ("<|im_start|>", "<|im_end|>")


def _read_sentences(files: Iterable[Path], max_chars_per_line: int) -> Iterator[str]:
    for path in files:
        try:
            with open(path, encoding="utf-8") as f:
                for line in f:
                    line = line.rstrip("\n")
                    if line.strip():
                        yield line[:max_chars_per_line]
        except UnicodeDecodeError as err:
            raise DataError(
                f"{path} is not valid UTF-8 (byte offset {err.start} in a chunk): {err.reason}"
            ) from None


def train_sentencepiece(
    inputs: list[str | Path],
    out_dir: str | Path,
    vocab_size: int = 32000,
    model_type: str = "bpe",
    special_tokens: Iterable[str] = DEFAULT_SPECIAL_TOKENS,
    character_coverage: float = 0.9995,
    input_sentence_size: int = 2_000_000,
    num_threads: int | None = None,
    seed: int = 0,
    add_dummy_prefix: bool = False,
) -> Path:
    """Train on UTF-8 text files (or folders of them) and write `<out_dir>/tokenizer.model`; returns its path.

    Ids: 0 `<unk>`, 1 `<s>` (bos), 2 `</s>` (eos), 3 `<pad>`, then `special_tokens` as user-defined
    symbols (matched verbatim in text, e.g. chat markers), then bytes and learned pieces.
    `add_dummy_prefix=False` (GPT-style: no space invented before the first word) keeps the HF export
    exact even for text starting with a special token; see `hf_export.py`.
    """
    import sentencepiece as spm

    if model_type not in ("bpe", "unigram"):
        raise DataError(f"model_type must be 'bpe' or 'unigram', got {model_type!r}")
    from densa.data.readers import expand_inputs

    for p in map(Path, inputs):
        if not p.exists():
            raise DataError(f"tokenizer training input {p} does not exist")
    files = expand_inputs(inputs)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    special = [t for t in special_tokens if t]
    args = dict(
        vocab_size=vocab_size,
        model_type=model_type,
        character_coverage=character_coverage,
        byte_fallback=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=add_dummy_prefix,
        split_digits=True,
        allow_whitespace_only_pieces=False,
        max_sentence_length=1 << 16,
        input_sentence_size=input_sentence_size,
        shuffle_input_sentence=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=3,
        user_defined_symbols=special,
        num_threads=num_threads or max(1, os.cpu_count() or 1),
        hard_vocab_limit=True,
        minloglevel=2,
    )
    sentences = _read_sentences(files, max_chars_per_line=1 << 15)
    first = next(sentences, None)
    if first is None:
        raise DataError(f"tokenizer training inputs contain no text: {[str(p) for p in files]}")
    prefix = out_dir / "tokenizer"

    def all_sentences() -> Iterator[str]:
        yield first
        yield from sentences

    spm.set_random_generator_seed(seed)
    try:
        spm.SentencePieceTrainer.train(sentence_iterator=all_sentences(), model_prefix=str(prefix), **args)
    except RuntimeError as err:
        raise DataError(f"sentencepiece training failed: {err}") from None
    (out_dir / "tokenizer.vocab").unlink(missing_ok=True)
    record = {k: v for k, v in args.items() if k != "num_threads"}
    record["inputs"] = [p.name for p in files]
    (out_dir / "train_args.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return out_dir / SP_MODEL_NAME
