"""`preprocess` and `densa data preprocess`: output content, manifest, bad input, atomicity."""

from __future__ import annotations

import json

import pytest

from densa.data import preprocess as pp
from densa.data.indexed import IndexedDataset
from densa.data.manifest import check_manifest_matches, read_manifest
from densa.data.tokenizer import load_tokenizer
from densa.errors import DataError
from densa.launch.cli import main


def _jsonl(path, texts, key="text"):
    path.write_text("".join(json.dumps({key: t}) + "\n" for t in texts), encoding="utf-8")
    return path


TEXTS = ["hello world", "привет мир 東京", "the quick brown fox 😀", "data 123"]


def test_jsonl_tokens_and_manifest(tmp_path, sp_model):
    src = _jsonl(tmp_path / "a.jsonl", TEXTS)
    r = pp.preprocess([src], sp_model, tmp_path / "out" / "a", progress=False)
    tok = load_tokenizer(sp_model)
    ds = IndexedDataset(tmp_path / "out" / "a")
    assert [ds[i].tolist() for i in range(len(ds))] == [tok.encode(t) + [tok.eos_id] for t in TEXTS]
    m = read_manifest(tmp_path / "out" / "a")
    assert m == r.manifest
    assert (m.num_documents, m.num_tokens, m.dtype, m.vocab_size) == (4, ds.num_tokens, "uint16", 400)
    assert m.tokenizer_fingerprint == tok.fingerprint and m.eos_id == 2 and m.sources == [str(src)]


def test_workers_and_hf_tokenizer_give_same_ids(tmp_path, sp_model, hf_folder, corpus_file):
    src = _jsonl(tmp_path / "c.jsonl", corpus_file.read_text(encoding="utf-8").splitlines()[:500])
    a = pp.preprocess([src], sp_model, tmp_path / "a", progress=False)
    b = pp.preprocess([src], hf_folder, tmp_path / "b", workers=2, batch_size=7, progress=False)
    assert a.manifest.tokenizer_fingerprint == b.manifest.tokenizer_fingerprint
    da, db = IndexedDataset(tmp_path / "a"), IndexedDataset(tmp_path / "b")
    assert len(da) == len(db) == 500
    assert all(da[i].tolist() == db[i].tolist() for i in range(500))


def test_text_paragraph_mode(tmp_path, sp_model):
    (tmp_path / "t.txt").write_text("first para\nline two\n\n\nsecond\n", encoding="utf-8")
    pp.preprocess([tmp_path / "t.txt"], sp_model, tmp_path / "o", text_mode="paragraph", progress=False)
    assert len(IndexedDataset(tmp_path / "o")) == 2


def test_parquet_input(tmp_path, sp_model):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"content": TEXTS}), tmp_path / "p.parquet")
    for streaming in (False, True):
        r = pp.preprocess(
            [tmp_path / "p.parquet"],
            sp_model,
            tmp_path / f"p{streaming}",
            key="content",
            streaming=streaming,
            progress=False,
        )
        assert r.manifest.num_documents == 4


def test_malformed_jsonl_names_file_line(tmp_path, sp_model):
    src = tmp_path / "bad.jsonl"
    src.write_text('{"text": "ok"}\n{"text": "broken\n{"text": "fine"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=rf"{src}:2: malformed JSON"):
        pp.preprocess([src], sp_model, tmp_path / "o", progress=False)
    r = pp.preprocess([src], sp_model, tmp_path / "o", skip_bad_lines=True, progress=False)
    assert r.skipped_lines == 1 and r.manifest.num_documents == 2


def test_missing_key_names_file_line(tmp_path, sp_model):
    src = tmp_path / "k.jsonl"
    src.write_text('{"text": "a"}\n{"body": "b"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=rf"{src}:2: missing key 'text'"):
        pp.preprocess([src], sp_model, tmp_path / "o", progress=False)


def test_non_utf8_names_file_and_offset(tmp_path, sp_model):
    src = tmp_path / "latin1.jsonl"
    src.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"latin1.jsonl:2: not valid UTF-8 \(byte offset 28"):
        pp.preprocess([src], sp_model, tmp_path / "o", progress=False)
    txt = tmp_path / "bad.txt"
    txt.write_bytes(b"line\nsecond \xff line\n")
    with pytest.raises(DataError, match=r"bad.txt:2: not valid UTF-8"):
        pp.preprocess([txt], sp_model, tmp_path / "o", progress=False)


def test_empty_input_is_an_error(tmp_path, sp_model):
    (tmp_path / "e.jsonl").write_text("\n\n", encoding="utf-8")
    with pytest.raises(DataError, match="no documents found"):
        pp.preprocess([tmp_path / "e.jsonl"], sp_model, tmp_path / "o", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no input files"):
        pp.preprocess([tmp_path / "empty"], sp_model, tmp_path / "o", progress=False)
    assert not list(tmp_path.glob("o.*"))


def test_interrupted_run_leaves_no_files(tmp_path, sp_model, monkeypatch):
    src = _jsonl(tmp_path / "a.jsonl", TEXTS * 50)
    pp.preprocess([src], sp_model, tmp_path / "old", progress=False)
    old = (tmp_path / "old.bin").read_bytes()
    calls = {"n": 0}
    real = pp.IndexedWriter.add_document

    def boom(self, ids, name=""):
        calls["n"] += 1
        if calls["n"] == 100:
            raise KeyboardInterrupt
        real(self, ids, name)

    monkeypatch.setattr(pp.IndexedWriter, "add_document", boom)
    with pytest.raises(KeyboardInterrupt):
        pp.preprocess([src], sp_model, tmp_path / "new", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl", "old.bin", "old.idx", "old.json"]
    calls["n"] = 0
    (tmp_path / "a.jsonl").write_text(json.dumps({"text": "changed"}) + "\n" + src.read_text() * 2)
    with pytest.raises(KeyboardInterrupt):
        pp.preprocess([src], sp_model, tmp_path / "old", progress=False)
    assert (tmp_path / "old.bin").read_bytes() == old  # an existing dataset survives a failed rewrite
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl", "old.bin", "old.idx", "old.json"]


def test_manifest_mismatch_names_both(tmp_path, sp_model):
    src = _jsonl(tmp_path / "a.jsonl", TEXTS)
    m = pp.preprocess([src], sp_model, tmp_path / "a", progress=False).manifest
    check_manifest_matches(m, m.tokenizer_fingerprint, 400)
    check_manifest_matches(m, vocab_size=512)  # a padded embedding still fits every id
    other = "f" * 64
    with pytest.raises(DataError) as err:
        check_manifest_matches(m, other, 300)
    msg = str(err.value)
    assert m.tokenizer_fingerprint[:16] in msg and other[:16] in msg
    assert "data vocab_size 400" in msg and "model vocab_size 300" in msg


def test_cli_preprocess_and_error_message(tmp_path, sp_model, capsys):
    src = _jsonl(tmp_path / "a.jsonl", TEXTS)
    assert (
        main(["data", "preprocess", str(src), "--tokenizer", str(sp_model), "--out", str(tmp_path / "c")])
        == 0
    )
    assert "4 documents" in capsys.readouterr().out
    (tmp_path / "b.jsonl").write_text("not json\n", encoding="utf-8")
    rc = main(["data", "preprocess", str(tmp_path / "b.jsonl"), "--tokenizer", str(sp_model), "--out", "x"])
    assert rc == 1
    assert f"{tmp_path / 'b.jsonl'}:1: malformed JSON" in capsys.readouterr().err
