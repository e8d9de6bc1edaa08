"""The .bin/.idx writer and reader: exact round trip, megatron-core compatibility, dtype boundary."""

from __future__ import annotations

import struct
import warnings

import numpy as np
import pytest

from densa.data.indexed import IndexedDataset, IndexedWriter, dtype_for_vocab
from densa.errors import DataError


def _write(prefix, docs, vocab):
    with IndexedWriter(prefix, vocab) as w:
        for d in docs:
            w.add_document(d)
        w.finalize()


def test_round_trip_exact(tmp_path):
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 1000, size=rng.integers(0, 50)).tolist() for _ in range(100)]
    _write(tmp_path / "d", docs, 1000)
    ds = IndexedDataset(tmp_path / "d")
    assert len(ds) == 100 and ds.dtype == np.uint16
    assert [ds[i].tolist() for i in range(100)] == docs
    assert ds.num_tokens == sum(map(len, docs))
    assert ds.get(5, offset=1, length=2).tolist() == docs[5][1:3]


def test_header_bytes_match_megatron_layout(tmp_path):
    _write(tmp_path / "d", [[1, 2, 3], [4]], 70000)
    raw = (tmp_path / "d.idx").read_bytes()
    assert raw[:9] == b"MMIDIDX\x00\x00"
    version, code, seqs, docs = struct.unpack("<QBQQ", raw[9:34])
    assert (version, code, seqs, docs) == (1, 4, 2, 3)  # int32 is Megatron code 4
    lengths = np.frombuffer(raw, np.int32, 2, 34)
    pointers = np.frombuffer(raw, np.int64, 2, 42)
    doc_idx = np.frombuffer(raw, np.int64, 3, 58)
    assert lengths.tolist() == [3, 1] and pointers.tolist() == [0, 12] and doc_idx.tolist() == [0, 1, 2]
    assert len(raw) == 58 + 24


def test_readable_by_megatron_core(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            from megatron.core.datasets.indexed_dataset import IndexedDataset as MegatronIndexed
        except Exception as err:  # pragma: no cover - depends on the environment
            pytest.skip(f"megatron-core does not import here: {err}")
    docs = [[5, 6, 7], [], [65535, 0], [9] * 20]
    _write(tmp_path / "d", docs, 65536)
    m = MegatronIndexed(str(tmp_path / "d"))
    assert len(m) == 4
    assert [m[i].tolist() for i in range(4)] == docs
    assert m.index.dtype == np.uint16


@pytest.mark.parametrize(("vocab", "dtype"), [(65535, np.uint16), (65536, np.uint16), (65537, np.int32)])
def test_dtype_boundary(vocab, dtype):
    assert dtype_for_vocab(vocab) == dtype


def test_max_id_fits_uint16_and_overflow_rejected(tmp_path):
    _write(tmp_path / "ok", [[65535]], 65536)
    assert IndexedDataset(tmp_path / "ok")[0].tolist() == [65535]
    _write(tmp_path / "big", [[65536]], 65537)
    ds = IndexedDataset(tmp_path / "big")
    assert ds.dtype == np.int32 and ds[0].tolist() == [65536]
    msg = r"token id 65536 in document doc.jsonl:7 is outside the vocabulary"
    with pytest.raises(DataError, match=msg), IndexedWriter(tmp_path / "bad", 65536) as w:
        w.add_document([1, 65536], name="doc.jsonl:7")
    assert not list(tmp_path.glob("bad*"))


def test_forcing_uint16_for_large_vocab_is_refused(tmp_path):
    with pytest.raises(DataError, match="uint16"):
        IndexedWriter(tmp_path / "x", 70000, dtype=np.uint16)
