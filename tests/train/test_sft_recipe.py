"""SFT from recipe data: `data.format: sft` reads chat JSONL through SFTDataset, and the trainer's first
loss is the response-only loss computed by hand from the initial weights and the same batches."""

from __future__ import annotations

import torch
from trainer_helpers import sft_cfg, sft_corpus

from densa.data.sft import SFTDataset
from densa.models import causal_lm_loss
from densa.train.callbacks import Callback
from densa.train.data import train_source
from densa.train.run import build_trainer

SEQ = 48


class InitialWeights(Callback):
    def on_train_start(self, trainer) -> None:
        self.state = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def test_sft_recipe_trains_on_responses_only(tmp_path, ds_world):
    tok, jsonl = sft_corpus(tmp_path, prompt_words=(5, 5), response_words=(7, 7))
    cfg = sft_cfg(tmp_path / "run", tok, jsonl, SEQ)
    probe = InitialWeights()
    trainer = build_trainer(cfg, callbacks=[probe])
    result = trainer.fit()

    # The same first step's micro-batches, straight from the recipe's data path.
    first_step = next(train_source(cfg, 4, 2, 0, 1, trainer_tokenizer(tok))(0))
    reference = SFTDataset(jsonl, tok, SEQ)
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
