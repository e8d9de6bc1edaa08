"""bf16 training on a CUDA device (marker `gpu`, skipped on CPU; run by benchmarks/gpu/run_all.sh): the
DeepSpeed engine puts the model on the GPU in bf16, it learns, and it stays within 2% of fp32 on the GPU."""

from __future__ import annotations

import pytest
import torch
from trainer_helpers import SEQ, VOCAB, replace, tiny_cfg

from densa.train.run import build_trainer
from densa.train.synthetic import SyntheticDataset

STEPS = 6


@pytest.mark.gpu
def test_bf16_trains_on_the_gpu_close_to_fp32(tmp_path, ds_world):
    runs = {}
    for precision in ("fp32", "bf16"):
        cfg = replace(tiny_cfg(tmp_path / precision, steps=STEPS), "parallel", precision=precision)
        trainer = build_trainer(cfg, train_data=SyntheticDataset(VOCAB, SEQ))
        runs[precision] = [h["loss"] for h in trainer.fit().history]
        param = next(trainer.engine.module.parameters())
        assert param.device.type == "cuda"
        assert param.dtype == (torch.bfloat16 if precision == "bf16" else torch.float32)
    loss32, loss16 = runs["fp32"], runs["bf16"]
    assert loss16[-1] < loss16[0]
    assert all(abs(a - b) / a < 0.02 for a, b in zip(loss32, loss16, strict=True)), (loss32, loss16)
    assert loss16 != loss32
