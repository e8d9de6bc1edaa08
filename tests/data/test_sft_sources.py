"""SFT and pretraining inputs users have: JSONL, parquet, `datasets` folders and a local hub cache.

Every format is made here from the same records (no network) and read back; the conversations, the SFT
tensors and the preprocessed tokens must equal the JSONL reference exactly."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch

from densa.data.indexed import IndexedDataset
from densa.data.preprocess import preprocess
from densa.data.sft import SFTDataset, read_sft
from densa.errors import DataError

CHATS = [
    {
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hello world"},
            {"role": "assistant", "content": "привет мир"},
        ]
    },
    {"messages": [{"role": "user", "content": "东京?"}, {"role": "assistant", "content": "data 😀"}]},
    {"messages": [{"role": "user", "content": "the quick"}, {"role": "assistant", "content": "brown fox"}]},
]
PAIRS = [{"prompt": "hello", "response": "world"}, {"prompt": "lazy dog", "response": "café naïve"}]
EXPECTED_CHATS = [c["messages"] for c in CHATS]
EXPECTED_PAIRS = [
    [{"role": "user", "content": p["prompt"]}, {"role": "assistant", "content": p["response"]}] for p in PAIRS
]


def _jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def _hub_cache(root: Path, train: list[dict], test: list[dict]) -> Path:
    """The layout huggingface_hub writes: datasets--ORG--NAME/{refs/main, snapshots/REV/data/*.parquet}."""
    repo = root / "datasets--someone--chats"
    snap = repo / "snapshots" / "0123abcd"
    (snap / "data").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    datasets.Dataset.from_list(train).to_parquet(str(snap / "data" / "train-00000-of-00001.parquet"))
    datasets.Dataset.from_list(test).to_parquet(str(snap / "data" / "test-00000-of-00001.parquet"))
    (snap / "README.md").write_text("---\nlicense: mit\n---\n")
    return repo


@pytest.fixture
def sources(tmp_path) -> dict[str, Path]:
    ds = datasets.Dataset.from_list(CHATS)
    ds.to_parquet(str(tmp_path / "chats.parquet"))
    ds.save_to_disk(str(tmp_path / "saved"))
    datasets.DatasetDict({"train": ds, "test": ds.select([0])}).save_to_disk(str(tmp_path / "dict"))
    return {
        "jsonl": _jsonl(tmp_path / "chats.jsonl", CHATS),
        "parquet": tmp_path / "chats.parquet",
        "saved": tmp_path / "saved",
        "dict": tmp_path / "dict",
        "dict_split": tmp_path / "dict" / "train",
        "hub": _hub_cache(tmp_path / "hub", CHATS, CHATS[:1]),
        "hub_snapshot": tmp_path / "hub" / "datasets--someone--chats" / "snapshots" / "0123abcd",
    }


@pytest.mark.parametrize("kind", ["jsonl", "parquet", "saved", "dict", "dict_split", "hub", "hub_snapshot"])
def test_every_source_reads_the_same_conversations(sources, kind):
    assert read_sft(sources[kind]) == EXPECTED_CHATS


def test_prompt_response_columns(tmp_path):
    datasets.Dataset.from_list(PAIRS).to_parquet(str(tmp_path / "p.parquet"))
    datasets.Dataset.from_list(PAIRS).save_to_disk(str(tmp_path / "p"))
    assert read_sft(tmp_path / "p.parquet") == EXPECTED_PAIRS
    assert read_sft(tmp_path / "p") == EXPECTED_PAIRS


def test_sft_tensors_identical_across_sources(sources, sp_model):
    ref = SFTDataset(sources["jsonl"], sp_model, seq_len=40)
    for kind in ("parquet", "saved", "hub"):
        ds = SFTDataset(sources[kind], sp_model, seq_len=40)
        assert len(ds) == len(ref) == 3
        for i in range(3):
            assert all(torch.equal(ds[i][k], ref[i][k]) for k in ("input_ids", "labels", "loss_mask"))


def test_missing_column_names_file_and_columns(tmp_path):
    datasets.Dataset.from_list([{"question": "a", "answer": "b"}]).to_parquet(str(tmp_path / "qa.parquet"))
    with pytest.raises(DataError, match=r"qa\.parquet: needs a column 'messages' or columns 'prompt' and"):
        read_sft(tmp_path / "qa.parquet")
    with pytest.raises(DataError, match=r"\(columns: \['question', 'answer'\]\)"):
        read_sft(tmp_path / "qa.parquet")


def test_wrong_type_names_row_and_key(tmp_path):
    rows = [{"prompt": "a", "response": "b"}, {"prompt": "c", "response": None}]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "bad"))
    with pytest.raises(DataError, match=r"bad:row 2: 'response' must be a string, got NoneType"):
        read_sft(tmp_path / "bad")
    assert read_sft(tmp_path / "bad", skip_bad_lines=True) == [
        [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    ]
    datasets.Dataset.from_list([{"messages": "hi"}]).to_parquet(str(tmp_path / "m.parquet"))
    with pytest.raises(DataError, match=r"m\.parquet:row 1: 'messages' must be a non-empty list, got str"):
        read_sft(tmp_path / "m.parquet")


def test_empty_and_unknown_inputs(tmp_path):
    empty = datasets.Dataset.from_dict({"prompt": [], "response": []})
    empty.to_parquet(str(tmp_path / "empty.parquet"))
    with pytest.raises(DataError, match=r"SFT data .*empty\.parquet contains no examples"):
        read_sft(tmp_path / "empty.parquet")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match=r"SFT data .*empty\.jsonl contains no examples"):
        read_sft(tmp_path / "empty.jsonl")
    (tmp_path / "plain").mkdir()
    with pytest.raises(DataError, match=r"plain: no parquet or JSONL files \(of the train split\)"):
        read_sft(tmp_path / "plain")
    with pytest.raises(DataError, match="does not exist"):
        read_sft(tmp_path / "nope.parquet")
    datasets.DatasetDict({"test": datasets.Dataset.from_list(PAIRS)}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(DataError, match=r"DatasetDict without a 'train' split \(splits: \['test'\]\)"):
        read_sft(tmp_path / "dd")


# ---------------------------------------------------------------------------------- pretraining


def _tokens(prefix: Path) -> list[list[int]]:
    ds = IndexedDataset(prefix)
    return [np.asarray(ds[i]).tolist() for i in range(len(ds))]


def test_preprocess_from_tables_equals_jsonl(tmp_path, sp_model):
    docs = [{"body": "hello world", "id": 1}, {"body": "東京 привет 😀", "id": 2}, {"body": "café", "id": 3}]
    _jsonl(tmp_path / "d.jsonl", docs)
    table = datasets.Dataset.from_list(docs)
    table.to_parquet(str(tmp_path / "d.parquet"))
    table.save_to_disk(str(tmp_path / "saved"))
    hub = _hub_cache(tmp_path / "hub", docs, docs[:1])
    ref = preprocess([tmp_path / "d.jsonl"], sp_model, tmp_path / "out" / "ref", key="body", progress=False)
    assert ref.manifest.num_documents == 3
    for name, src in (("pq", tmp_path / "d.parquet"), ("saved", tmp_path / "saved"), ("hub", hub)):
        r = preprocess([src], sp_model, tmp_path / "out" / name, key="body", progress=False)
        assert _tokens(tmp_path / "out" / name) == _tokens(tmp_path / "out" / "ref"), name
        assert r.manifest.num_tokens == ref.manifest.num_tokens
    # the hub cache contributes only its train split (one parquet file), never README.md or test files
    assert read_manifest_sources(tmp_path / "out" / "hub") == ["train-00000-of-00001.parquet"]


def read_manifest_sources(prefix: Path) -> list[str]:
    from densa.data.manifest import read_manifest

    return [Path(s).name for s in read_manifest(prefix).sources]


def test_preprocess_missing_or_wrong_column(tmp_path, sp_model):
    datasets.Dataset.from_list([{"body": "x"}]).save_to_disk(str(tmp_path / "saved"))
    with pytest.raises(
        DataError, match=r"saved: no column 'text' \(columns: \['body'\]\); pick one with --key"
    ):
        preprocess([tmp_path / "saved"], sp_model, tmp_path / "o", progress=False)
    datasets.Dataset.from_list([{"text": "x"}, {"text": None}]).save_to_disk(str(tmp_path / "nulls"))
    with pytest.raises(DataError, match=r"nulls:row 2: 'text' must be a string, got NoneType"):
        preprocess([tmp_path / "nulls"], sp_model, tmp_path / "o", progress=False)


def test_cli_preprocess_column_option(tmp_path, sp_model):
    from densa.launch.cli import main

    datasets.Dataset.from_list([{"body": "hello world"}]).save_to_disk(str(tmp_path / "saved"))
    argv = ["data", "preprocess", str(tmp_path / "saved"), "--tokenizer", str(sp_model)]
    assert main([*argv, "--out", str(tmp_path / "o"), "--column", "body"]) == 0
    assert len(_tokens(tmp_path / "o")) == 1
