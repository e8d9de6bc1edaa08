"""Packed GPT dataset, index cache, blending, and the resumable data-parallel batch iterator."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from densa.data.blend import BlendedDataset, blend_indices, build_pretraining_dataset
from densa.data.gpt_dataset import GPTDataset
from densa.data.indexed import IndexedWriter
from densa.data.manifest import Manifest, write_manifest
from densa.data.sampler import BatchIterator, iterate_batches
from densa.errors import DataError

VOCAB = 1000


def make_dataset(prefix, n_docs=50, seed=0, fingerprint="abc"):
    rng = np.random.default_rng(seed)
    docs = [rng.integers(3, VOCAB, size=rng.integers(1, 40)).tolist() + [2] for _ in range(n_docs)]
    with IndexedWriter(prefix, VOCAB) as w:
        for d in docs:
            w.add_document(d)
        w.finalize()
    m = Manifest(fingerprint, "tok", VOCAB, 1, 2, "uint16", n_docs, sum(map(len, docs)))
    write_manifest(prefix, m)
    return docs


def test_samples_are_contiguous_windows_of_the_shuffled_stream(tmp_path):
    docs = make_dataset(tmp_path / "d")
    ds = GPTDataset(tmp_path / "d", seq_len=16, num_samples=200, seed=3)
    stream = np.concatenate([docs[int(d)] for d in ds.doc_idx])
    covered = set()
    for k in range(200):
        i = int(ds.shuffle_idx[k])
        assert ds.tokens(k).tolist() == stream[i * 16 : i * 16 + 17].tolist()
        covered.add(i)
        s = ds[k]
        assert s["input_ids"].dtype == torch.long and s["input_ids"].shape == (16,)
        assert torch.equal(s["input_ids"][1:], s["labels"][:-1]) and s["loss_mask"].sum() == 16
    assert covered == set(range(200))  # the shuffle is a permutation
    # several epochs: each epoch holds every document exactly once
    epoch = len(docs)
    assert sorted(ds.doc_idx[:epoch].tolist()) == list(range(epoch))


def test_determinism_and_index_cache(tmp_path):
    make_dataset(tmp_path / "d")
    a = GPTDataset(tmp_path / "d", 16, 100, seed=5)
    files = sorted(p.name for p in (tmp_path / "d_index_cache").iterdir())
    assert len(files) == 4 and any(f.endswith("shuffle_idx.npy") for f in files)
    b = GPTDataset(tmp_path / "d", 16, 100, seed=5)  # loaded from the cache
    c = GPTDataset(tmp_path / "d", 16, 100, seed=6, cache_dir=None)
    assert all(torch.equal(a[i]["input_ids"], b[i]["input_ids"]) for i in range(100))
    assert not all(torch.equal(a[i]["input_ids"], c[i]["input_ids"]) for i in range(100))
    make_dataset(tmp_path / "d", seed=1)  # re-preprocessed data invalidates the cache
    GPTDataset(tmp_path / "d", 16, 100, seed=5)
    assert len(list((tmp_path / "d_index_cache").glob("*shuffle_idx.npy"))) == 2


def test_manifest_checked_on_load(tmp_path):
    make_dataset(tmp_path / "d", fingerprint="a" * 64)
    with pytest.raises(DataError, match="aaaaaaaa.*bbbbbbbb"):
        GPTDataset(tmp_path / "d", 16, 10, tokenizer_fingerprint="b" * 64, cache_dir=None)
    with pytest.raises(DataError, match="data vocab_size 1000.*model vocab_size 512"):
        GPTDataset(tmp_path / "d", 16, 10, vocab_size=512, cache_dir=None)
    (tmp_path / "d.json").unlink()
    with pytest.raises(DataError, match="manifest .* not found"):
        GPTDataset(tmp_path / "d", 16, 10, cache_dir=None)


def _ids(batches):
    return [torch.cat([mb["input_ids"] for mb in step]) for step in batches]


def test_resume_equals_uninterrupted(tmp_path):
    make_dataset(tmp_path / "d")
    ds = GPTDataset(tmp_path / "d", 8, 400, seed=1)
    n = 5
    full = _ids(iterate_batches(ds, 8, 2))[: 2 * n]
    first = iterate_batches(ds, 8, 2)
    part1 = []
    for step in first:
        part1.append(step)
        if len(part1) == n:
            break
    state = first.state_dict()
    assert state == {"consumed_samples": n * 8}
    resumed = BatchIterator(GPTDataset(tmp_path / "d", 8, 400, seed=1), 8, 2, **state)
    part2 = [step for _, step in zip(range(n), resumed)]
    got = _ids(part1) + _ids(part2)
    assert len(got) == 2 * n and all(torch.equal(a, b) for a, b in zip(full, got))


def test_dp_shards_are_disjoint_and_cover_each_global_batch(tmp_path):
    make_dataset(tmp_path / "d")
    ds = GPTDataset(tmp_path / "d", 8, 96, seed=1)
    single = _ids(iterate_batches(ds, 12, 3))
    world = 4
    per_rank = [_ids(iterate_batches(ds, 12, 3, dp_rank=r, dp_world=world)) for r in range(world)]
    assert all(len(p) == len(single) == 8 for p in per_rank)
    for step in range(8):
        shards = [p[step] for p in per_rank]
        assert all(s.shape == (3, 8) for s in shards)
        assert torch.equal(torch.cat(shards), single[step])  # together exactly the global batch, in order
    it = iterate_batches(ds, 12, 3, dp_rank=1, dp_world=4)
    assert it.grad_accum_steps == 1 and len(it) == 8
    with pytest.raises(DataError, match="multiple of micro_batch_size"):
        iterate_batches(ds, 10, 3, dp_world=2)


def test_blend_proportions_and_determinism():
    w = [0.5, 0.3, 0.2]
    di, dsi = blend_indices(w, 10000, seed=0)
    counts = np.bincount(di, minlength=3)
    assert np.abs(counts / 10000 - w).max() < 0.001
    for prefix in (100, 1000, 3333):  # every prefix of the blend is balanced too
        c = np.bincount(di[:prefix], minlength=3)
        assert np.abs(c - np.array(w) * prefix).max() <= 1.0 + 1e-9
    for d in range(3):
        assert dsi[di == d].tolist() == list(range(counts[d]))
    di2, _ = blend_indices(w, 10000, seed=0)
    di3, _ = blend_indices(w, 10000, seed=1)
    assert np.array_equal(di, di2) and not np.array_equal(di, di3)


def test_blended_dataset_over_real_sources(tmp_path):
    for k in range(2):
        make_dataset(tmp_path / f"s{k}", seed=k)
    blend = build_pretraining_dataset([tmp_path / "s0", tmp_path / "s1"], 8, 300, weights=[3, 1], seed=2)
    assert isinstance(blend, BlendedDataset) and len(blend) == 300
    src0 = {tuple(blend.datasets[0].tokens(i).tolist()) for i in range(len(blend.datasets[0]))}
    from_0 = sum(tuple(np.append(blend[i]["input_ids"].numpy(), blend[i]["labels"][-1].item())) in src0
                 for i in range(300))  # fmt: skip
    assert abs(from_0 / 300 - 0.75) < 0.02
    with pytest.raises(DataError, match="weights"):
        build_pretraining_dataset([tmp_path / "s0", tmp_path / "s1"], 8, 10, weights=[-1, 1])
