"""Retaining heads trained from a recipe on token-level data (issue 18, item 8): `.bin/.idx` rows (the last
`retaining_heads.answer_tokens` are the answer) through `densa train`, and rows of a task generator
(`retaining_heads.task`) with no data.train."""

from __future__ import annotations

import json

import torch
import yaml
from trainer_helpers import replace, tiny_cfg

from densa.config.schema import DataSection, RetainingHeadsSection
from densa.launch.cli import main
from densa.longctx.tasks import TaskDataset, TaskVocab
from densa.models.checkpoint_io import save_transformer
from densa.models.config import ModelConfig
from densa.models.hf.exporter import export_hf
from densa.models.transformer import Transformer
from densa.retaining_heads import heads_loss, load_heads
from densa.train.run import build_trainer

VOCAB, SEQ = 320, 64
MODEL = ModelConfig(
    vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64, max_seq_len=SEQ
)


def _records(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_heads_from_bin_idx_through_densa_train(tmp_path, ds_world):
    from densa.data.indexed import IndexedWriter
    from densa.models.hf.importer import load_hf_model

    torch.manual_seed(0)
    export_hf(tmp_path / "hf", Transformer(MODEL))
    gen = torch.Generator().manual_seed(0)
    with IndexedWriter(tmp_path / "tokens", vocab_size=VOCAB) as writer:
        for _ in range(16):
            writer.add_document(torch.randint(3, VOCAB, (100,), generator=gen).tolist())
        writer.finalize()
    from densa.data.manifest import Manifest, write_manifest

    write_manifest(
        tmp_path / "tokens", Manifest("task-tokens", "none", VOCAB, None, None, "uint16", 16, 1600)
    )
    recipe = {
        "run": {"name": "heads", "out_dir": str(tmp_path / "run"), "seed": 1},
        "init": {"from_path": str(tmp_path / "hf")},
        "retaining_heads": {"enabled": True, "hidden": 8, "answer_tokens": 16},
        "data": {"train": [{"path": str(tmp_path / "tokens")}], "seq_len": 32},
        "batch": {"global_tokens": 64, "micro_batch": 2},
        "optim": {"lr": 1e-2, "weight_decay": 0.0},
        "schedule": {"kind": "constant"},
        "train": {"steps": 3},
        "checkpoint": {"interval": 1000, "keep_last": 1},
        "logging": {"log_interval": 1, "tensorboard": False, "progress": False},
    }
    (tmp_path / "heads.yaml").write_text(yaml.safe_dump(recipe), encoding="utf-8")
    assert main(["train", str(tmp_path / "heads.yaml")]) == 0
    losses = [r["cis_loss"] for r in _records(tmp_path / "run") if "cis_loss" in r]
    assert len(losses) == 3 and all(v > 0 for v in losses)
    # The heads fit the very folder they were trained from, loaded the plain way.
    load_heads(load_hf_model(tmp_path / "hf"), tmp_path / "run" / "retaining_heads.safetensors")


def test_answer_tokens_mark_the_tail_as_the_answer() -> None:
    """A pretraining row's all-ones loss_mask is ignored: the last answer_tokens are the answer."""
    from densa.retaining_heads import attach_heads

    model = Transformer(MODEL).eval()
    attach_heads(model, hidden=8)
    ids = torch.randint(3, VOCAB, (2, 32), generator=torch.Generator().manual_seed(1))
    answer = torch.zeros_like(ids, dtype=torch.bool)
    answer[:, -16:] = True
    pretrain = {"input_ids": ids, "loss_mask": torch.ones(2, 32)}
    explicit = {"input_ids": ids, "answer_mask": answer}
    with torch.no_grad():
        assert torch.equal(heads_loss(model, pretrain, answer_tokens=16), heads_loss(model, explicit))


def test_heads_from_a_task_generator(tmp_path, ds_world):
    torch.manual_seed(0)
    save_transformer(tmp_path / "backbone", Transformer(MODEL))
    cfg = tiny_cfg(tmp_path / "run", steps=2, global_samples=2, micro_batch=2, model=MODEL)
    cfg = replace(cfg, "init", from_path=str(tmp_path / "backbone"))
    cfg = replace(cfg, "data", seq_len=SEQ, train=())
    cfg = replace(cfg, "batch", global_tokens=2 * SEQ)
    cfg = replace(cfg, "retaining_heads", enabled=True, hidden=8, task="mqar")
    assert isinstance(cfg.data, DataSection) and isinstance(cfg.retaining_heads, RetainingHeadsSection)
    trainer = build_trainer(cfg)  # no train_data: the rows come from the task
    rows = next(trainer.train_data(0))[0]
    expected = TaskDataset("mqar", 4, SEQ, seed=cfg.run.seed)
    assert TaskVocab().size == 259
    assert any(torch.equal(rows["input_ids"][0], expected[i]["input_ids"]) for i in range(4))
    assert rows["context_mask"].dtype == torch.bool and rows["loss_mask"].sum() > 0
    trainer.fit()
    assert all(r["cis_loss"] > 0 for r in _records(tmp_path / "run") if "cis_loss" in r)
    assert (tmp_path / "run" / "retaining_heads.safetensors").is_file()
