"""Gold resume test, one fp32 process: 2N steps == N steps + resume + N steps, bit for bit."""

from __future__ import annotations

import json

import torch
from trainer_helpers import SEQ, VOCAB, RngProbe, StopAt, tiny_cfg, weights

from densa.train.checkpoint import complete_checkpoints
from densa.train.run import build_trainer
from densa.train.synthetic import SyntheticDataset

N = 3


def _run(cfg, *callbacks):
    trainer = build_trainer(cfg, callbacks=[RngProbe(), *callbacks], train_data=SyntheticDataset(VOCAB, SEQ))
    result = trainer.fit()
    return trainer, result


def _probe(run_dir):
    return [json.loads(line)["probe/rand"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_resume_is_bit_exact(tmp_path, ds_world):
    full_dir, split_dir = tmp_path / "full", tmp_path / "split"
    ref_trainer, ref = _run(tiny_cfg(full_dir, steps=2 * N))

    first_trainer, first = _run(tiny_cfg(split_dir, steps=2 * N), StopAt(N - 1))
    assert first.interrupted and first.state.step == N
    assert [s for s, _ in complete_checkpoints(split_dir)] == [N]
    second_trainer, second = _run(tiny_cfg(split_dir, steps=2 * N))
    assert second.state.step == 2 * N and not second.interrupted

    split = first.history + second.history
    assert [h["step"] for h in split] == list(range(2 * N))
    assert [h["loss"] for h in split] == [h["loss"] for h in ref.history]  # exact, every step
    assert [h["lr"] for h in split] == [h["lr"] for h in ref.history]
    assert [h["grad_norm"] for h in split] == [h["grad_norm"] for h in ref.history]
    assert second.state.consumed_samples == ref.state.consumed_samples
    assert _probe(split_dir) == _probe(full_dir)  # torch RNG restored
    assert second_trainer.callbacks.callbacks[0].count == 2 * N  # callback state restored
    a, b = weights(ref_trainer), weights(second_trainer)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # optimizer state too: one more identical update from both must agree
    ref_state = ref_trainer.engine.torch_optimizer.state_dict()["state"]
    new_state = second_trainer.engine.torch_optimizer.state_dict()["state"]
    for i in ref_state:
        assert torch.equal(ref_state[i]["exp_avg_sq"], new_state[i]["exp_avg_sq"])
