"""Packed SFT (`data.pack: true`) against the unpacked path it replaces.

The reference is the padded path: one example per row, the plain causal mask and positions 0..T-1.
Packed rows must give every example exactly the same per-token losses (fp32), tokens must not see other
examples in their row, and a packed run must train and resume exactly like any other."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from trainer_helpers import SFT_VOCAB, StopAt, replace, sft_cfg, sft_corpus, weights

from densa.config.schema import DatasetSource
from densa.data.packing import PackedSFTDataset
from densa.data.sampler import collate
from densa.data.sft import SFTDataset
from densa.models.config import ModelConfig
from densa.models.transformer import Transformer
from densa.train.data import load_run_tokenizer, train_source
from densa.train.eval import loss_sums
from densa.train.run import build_trainer

SEQ, VOCAB = 96, SFT_VOCAB


@pytest.fixture(scope="module")
def sft_files(tmp_path_factory):
    return sft_corpus(tmp_path_factory.mktemp("packing"))


def _model() -> Transformer:
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64, max_seq_len=SEQ
    )
    return Transformer(cfg).eval()


def _token_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none").view(labels.shape)


def test_packed_losses_equal_unpacked(sft_files):
    tok, path = sft_files
    sft = SFTDataset(path, tok, SEQ)
    packed = PackedSFTDataset(sft, seed=0)
    assert len(packed) < len(sft) / 2  # short examples: at least two per row on average
    model = _model()
    with torch.no_grad():
        for r in range(len(packed)):
            row = packed[r]
            logits = model(
                row["input_ids"][None], position_ids=row["position_ids"][None], doc_ids=row["doc_ids"][None]
            )
            ce = _token_ce(logits, row["labels"][None])[0] * row["loss_mask"]
            for doc, e in enumerate(packed.rows[r]):
                alone = sft[e]
                ref_logits = model(alone["input_ids"][None])
                ref = (_token_ce(ref_logits, alone["labels"][None])[0] * alone["loss_mask"]).sum()
                got = ce[row["doc_ids"] == doc].sum()
                assert alone["loss_mask"].sum() == row["loss_mask"][row["doc_ids"] == doc].sum()
                torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_tokens_do_not_attend_across_examples(sft_files):
    tok, path = sft_files
    packed = PackedSFTDataset(SFTDataset(path, tok, SEQ), seed=0)
    r = next(i for i in range(len(packed)) if len(packed.rows[i]) >= 3)
    row = packed[r]
    ids, pos, docs = row["input_ids"][None], row["position_ids"][None], row["doc_ids"][None]
    model = _model()
    with torch.no_grad():
        base = model(ids, position_ids=pos, doc_ids=docs)
        for victim in range(3):
            changed = ids.clone()
            sel = docs == victim
            changed[sel] = (changed[sel] + 7) % VOCAB
            out = model(changed, position_ids=pos, doc_ids=docs)
            others = (docs != victim)[0]
            assert (out[0, others] - base[0, others]).abs().max() <= 1e-6
            assert (out[0, sel[0]] - base[0, sel[0]]).abs().max() > 1e-3  # the perturbation is visible


def test_eval_sums_equal_unpacked(sft_files):
    tok, path = sft_files
    sft = SFTDataset(path, tok, SEQ)
    packed = PackedSFTDataset(sft, seed=3)
    model = _model()
    plain = loss_sums(model, [collate([sft[i] for i in range(len(sft))])], "cpu")
    rows = loss_sums(model, [collate([packed[i] for i in range(len(packed))])], "cpu")
    assert rows[1] == plain[1]  # the same loss tokens
    torch.testing.assert_close(rows[0], plain[0], rtol=1e-6, atol=1e-5)


def _packed_cfg(tmp_path, run_dir, tok, path, steps=2):
    return sft_cfg(run_dir, tok, path, SEQ, steps=steps, pack=True)


def _unpacked_loss(model: Transformer, micro: dict) -> float:
    """The masked mean CE of a packed micro-batch, recomputed example by example without packing."""
    total, count = 0.0, 0.0
    with torch.no_grad():
        for r in range(micro["input_ids"].shape[0]):
            docs = micro["doc_ids"][r]
            for d in docs[docs >= 0].unique().tolist():
                sel = docs == d
                ids, labels, mask = (
                    micro["input_ids"][r][sel],
                    micro["labels"][r][sel],
                    micro["loss_mask"][r][sel],
                )
                assert micro["position_ids"][r][sel].tolist() == list(range(len(ids)))
                ce = _token_ce(model(ids[None]), labels[None])[0]
                total += float((ce * mask).sum())
                count += float(mask.sum())
    return total / count


def test_packed_run_first_loss_and_exact_resume(tmp_path, sft_files, ds_world):
    tok, path = sft_files
    cfg = _packed_cfg(tmp_path, tmp_path / "full", tok, path, steps=4)
    first_batches = next(train_source(cfg, 4, 2, 0, 1, load_run_tokenizer(cfg))(0))
    assert {"position_ids", "doc_ids"} <= set(first_batches[0])
    assert all(int(m["doc_ids"].max()) >= 1 for m in first_batches)  # rows really hold several examples

    ref_trainer = build_trainer(cfg)
    initial = {k: v.clone() for k, v in ref_trainer.model.state_dict().items()}
    ref = ref_trainer.fit()
    # step 0's loss: the mean over micro-batches of each one's masked mean, from the initial weights
    model = type(ref_trainer.model)(ref_trainer.model.config)
    model.load_state_dict(initial)
    expected = sum(_unpacked_loss(model, m) for m in first_batches) / len(first_batches)
    assert abs(ref.history[0]["loss"] - expected) < 1e-5

    split = _packed_cfg(tmp_path, tmp_path / "split", tok, path, steps=4)
    first = build_trainer(split, callbacks=[StopAt(1)]).fit()
    assert first.interrupted and first.state.step == 2
    second_trainer = build_trainer(split)
    second = second_trainer.fit()
    losses = [h["loss"] for h in first.history + second.history]
    assert losses == [h["loss"] for h in ref.history]  # exact, every step
    a, b = weights(ref_trainer), weights(second_trainer)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_cli_eval_reads_sft_tables(tmp_path, sft_files, capsys):
    """`densa eval --data` takes parquet and datasets folders like JSONL: same loss and token count."""
    import datasets

    from densa.launch.cli import main
    from densa.models.checkpoint_io import save_transformer

    tok, path = sft_files
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "sft.parquet"))
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    save_transformer(tmp_path / "model", _model())
    results = []
    for data in (path, tmp_path / "sft.parquet", tmp_path / "saved"):
        argv = ["eval", "--checkpoint", str(tmp_path / "model"), "--data", str(data), "--tokenizer", str(tok)]
        assert main([*argv, "--seq-len", str(SEQ), "--max-batches", "2"]) == 0
        results.append(json.loads(capsys.readouterr().out.strip().splitlines()[-1]))
    assert results[0]["tokens"] > 0 and results[1] == results[0] == results[2]


def test_recipe_check_accepts_sft_tables_and_folders(tmp_path, sft_files):
    import datasets

    from densa.config.checks import cross_section_problems

    tok, path = sft_files
    datasets.Dataset.from_list([{"prompt": "a", "response": "b"}]).save_to_disk(str(tmp_path / "saved"))
    base = _packed_cfg(tmp_path, tmp_path / "run", tok, path)
    for src, ok in (
        (tmp_path / "saved", True),
        (tmp_path / "x.parquet", True),
        (tmp_path / "missing", False),
    ):
        cfg = replace(base, "data", train=(DatasetSource(path=str(src)),))
        problems = [p.message for p in cross_section_problems(cfg) if p.path.startswith("data.train")]
        assert (problems == []) == ok, problems
