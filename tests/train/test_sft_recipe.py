"""SFT from recipe data: `data.format: sft` reads chat JSONL through SFTDataset, and the trainer's first
loss is the response-only loss computed by hand from the initial weights and the same batches."""

from __future__ import annotations

import json
import random

import torch
from trainer_helpers import replace, tiny_cfg

from densa.config.schema import DatasetSource
from densa.data.sft import SFTDataset
from densa.data.sp_train import train_sentencepiece
from densa.models import causal_lm_loss
from densa.train.callbacks import Callback
from densa.train.data import train_source
from densa.train.run import build_trainer

SEQ = 48


class InitialWeights(Callback):
    def on_train_start(self, trainer) -> None:
        self.state = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def test_sft_recipe_trains_on_responses_only(tmp_path, ds_world):
    rng = random.Random(0)
    words = [
        "alpha",
        "beta",
        "gamma",
        "delta",
        "echo",
        "foxtrot",
        "golf",
        "hotel",
        "india",
        "juliet",
        "kilo",
        "lima",
    ]
    (tmp_path / "corpus.txt").write_text("\n".join(" ".join(rng.choices(words, k=12)) for _ in range(300)))
    tok = train_sentencepiece([tmp_path / "corpus.txt"], tmp_path / "tok", vocab_size=320)
    records = [
        {"prompt": " ".join(rng.choices(words, k=5)), "response": " ".join(rng.choices(words, k=7))}
        for _ in range(40)
    ]
    (tmp_path / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))

    cfg = tiny_cfg(tmp_path / "run", steps=2, global_samples=4, micro_batch=2)
    cfg = replace(cfg, "model", vocab_size=320, max_seq_len=SEQ)
    cfg = replace(cfg, "batch", global_tokens=4 * SEQ)
    cfg = replace(
        cfg,
        "data",
        format="sft",
        seq_len=SEQ,
        tokenizer=str(tok),
        train=(DatasetSource(path=str(tmp_path / "sft.jsonl")),),
    )
    probe = InitialWeights()
    trainer = build_trainer(cfg, callbacks=[probe])
    result = trainer.fit()

    # The same first step's micro-batches, straight from the recipe's data path.
    first_step = next(train_source(cfg, 4, 2, 0, 1, trainer_tokenizer(tok))(0))
    reference = SFTDataset(tmp_path / "sft.jsonl", tok, SEQ)
    for micro in first_step:
        for ids, mask in zip(micro["input_ids"], micro["loss_mask"]):
            assert 0 < mask.sum() < (ids != reference.pad_id).sum()  # prompt tokens carry no loss
    model = type(trainer.model)(trainer.model.config)
    model.load_state_dict(probe.state)
    with torch.no_grad():
        losses = [
            causal_lm_loss(model(m["input_ids"]), m["labels"], m["loss_mask"]).item() for m in first_step
        ]
    assert abs(result.history[0]["loss"] - sum(losses) / len(losses)) < 1e-4


def trainer_tokenizer(path):
    from densa.data.tokenizer import load_tokenizer

    return load_tokenizer(path)
