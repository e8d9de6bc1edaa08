"""SentencePiece training and HF export: the exported tokenizer must encode exactly like SentencePiece."""

from __future__ import annotations

import json

import pytest
import sentencepiece as spm

from densa.data.hf_export import export_sentencepiece_to_hf, load_sp_proto
from densa.data.sp_train import train_sentencepiece
from densa.data.tokenizer import HFTokenizer, SentencePieceTokenizer, load_tokenizer
from densa.errors import DataError
from densa.launch.cli import main

FIXED_TEXTS = [
    "Hello world",
    " leading space",
    "   three leading spaces",
    "multiple    spaces  inside",
    "trailing space ",
    "line one\nline two\n\nafter blank",
    "\ttabs\tand\r\nCRLF",
    "東京は日本の首都です。你好，世界！",
    "Привет, мир! Книга и код.",
    "emoji 😀🚀 mixed 👍🏽 and ZWJ 👨‍👩‍👧",
    "café naïve ∑ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ½",
    "digits 1234567890 and 3.14159",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n  Hello!<|im_end|>",
    "text before <|im_start|> and after<|im_end|>",
    "",
    " ",
    "\n",
    "x",
]


@pytest.fixture(scope="module", params=["bpe", "unigram"])
def sp_and_hf(request, tmp_path_factory, corpus_file):
    out = tmp_path_factory.mktemp(f"sp_{request.param}")
    model = train_sentencepiece([corpus_file], out, vocab_size=360, model_type=request.param)
    return model, export_sentencepiece_to_hf(model, out / "hf")


def test_training_records_args(sp_model):
    args = json.loads((sp_model.parent / "train_args.json").read_text())
    assert args["vocab_size"] == 400 and args["byte_fallback"] is True
    spec = load_sp_proto(sp_model).trainer_spec
    assert (
        spec.vocab_size == 400
        and spec.byte_fallback
        and list(spec.user_defined_symbols)
        == [
            "<|im_start|>",
            "<|im_end|>",
        ]
    )


def test_exported_hf_encodes_identically(sp_and_hf):
    from transformers import AutoTokenizer

    model, folder = sp_and_hf
    sp = spm.SentencePieceProcessor(model_file=str(model))
    hf = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    for text in FIXED_TEXTS:
        ids = sp.encode(text)
        assert hf(text, add_special_tokens=False)["input_ids"] == ids, text
        assert hf(text)["input_ids"] == [sp.bos_id()] + ids, text
        assert hf.decode(ids) == sp.decode(ids), text
    batch = hf(FIXED_TEXTS, add_special_tokens=False)["input_ids"]
    assert batch == sp.encode(FIXED_TEXTS)
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id) == (1, 2, 3)
    assert hf.convert_tokens_to_ids("<|im_start|>") == 4
    # byte fallback survives export: an unseen character becomes byte pieces, not <unk>
    unseen = "Ωμέγα ☃"
    assert sp.unk_id() not in sp.encode(unseen)
    assert hf(unseen, add_special_tokens=False)["input_ids"] == sp.encode(unseen)


def test_exported_folder_files(sp_and_hf):
    _, folder = sp_and_hf
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model"):
        assert (folder / name).exists(), name
    special = json.loads((folder / "special_tokens_map.json").read_text())
    assert special["eos_token"] == "</s>" and "<|im_end|>" in special["additional_special_tokens"]


def test_wrappers_agree_and_share_fingerprint(sp_and_hf):
    model, folder = sp_and_hf
    a, b = load_tokenizer(model), load_tokenizer(folder)
    assert isinstance(a, SentencePieceTokenizer) and isinstance(b, HFTokenizer)
    assert a.fingerprint == b.fingerprint and len(a.fingerprint) == 64
    assert (a.vocab_size, a.bos_id, a.eos_id, a.pad_id) == (b.vocab_size, b.bos_id, b.eos_id, b.pad_id)
    assert a.encode_batch(FIXED_TEXTS) == b.encode_batch(FIXED_TEXTS)


def test_fingerprint_changes_with_vocab(tmp_path, corpus_file, sp_model):
    other = train_sentencepiece([corpus_file], tmp_path, vocab_size=380)
    assert load_tokenizer(other).fingerprint != load_tokenizer(sp_model).fingerprint


def test_bad_tokenizer_paths(tmp_path):
    with pytest.raises(DataError, match="no tokenizer at"):
        load_tokenizer(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        train_sentencepiece([tmp_path / "missing.txt"], tmp_path / "o", vocab_size=300)
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(DataError, match="no text"):
        train_sentencepiece([tmp_path / "empty.txt"], tmp_path / "o", vocab_size=300)


def test_cli_train_and_export(tmp_path, corpus_file, capsys):
    out = tmp_path / "tok"
    assert main(["data", "train-tokenizer", str(corpus_file), "--out", str(out), "--vocab-size", "350"]) == 0
    assert (
        main(["data", "export-tokenizer", str(out / "tokenizer.model"), "--out", str(tmp_path / "hf")]) == 0
    )
    a, b = load_tokenizer(out / "tokenizer.model"), load_tokenizer(tmp_path / "hf")
    assert a.vocab_size == 350 and a.encode_batch(FIXED_TEXTS) == b.encode_batch(FIXED_TEXTS)
