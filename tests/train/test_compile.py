"""`train.compile: true` (torch.compile through nn.Module.compile): the same losses as eager on a tiny
model, checkpoint keys unchanged, and the option's validation.

Tolerance: each step's loss within 1e-4 relative of eager (fp32 on CPU; inductor fuses and reorders
reductions, so the two may differ in the last bits).
"""

from __future__ import annotations

import pytest
from trainer_helpers import SEQ, VOCAB, replace, tiny_cfg, weights

from densa.config.checks import cross_section_problems
from densa.train.run import build_trainer
from densa.train.synthetic import SyntheticDataset

STEPS = 4


def _fit(cfg):
    trainer = build_trainer(cfg, callbacks=[], train_data=SyntheticDataset(VOCAB, SEQ))
    return trainer, trainer.fit()


@pytest.mark.slow  # inductor generates and compiles C++ for forward and backward: too slow by default
@pytest.mark.timeout(3000)
def test_compiled_training_matches_eager(tmp_path, ds_world):
    eager_trainer, eager = _fit(tiny_cfg(tmp_path / "eager", steps=STEPS))
    compiled_trainer, compiled = _fit(
        replace(tiny_cfg(tmp_path / "compiled", steps=STEPS), "train", compile=True)
    )
    assert compiled_trainer.engine.module._compiled_call_impl is not None  # really compiled
    assert eager_trainer.engine.module._compiled_call_impl is None
    a, b = [h["loss"] for h in eager.history], [h["loss"] for h in compiled.history]
    assert len(a) == len(b) == STEPS and a[-1] < a[0]
    assert all(abs(x - y) <= 1e-4 * abs(x) for x, y in zip(a, b, strict=True)), (a, b)
    assert list(weights(compiled_trainer)) == list(weights(eager_trainer))  # no _orig_mod. prefix


def test_compile_options_are_validated(tmp_path):
    def problems(**train):
        cfg = replace(tiny_cfg(tmp_path), "train", **train)
        return [(p.path, p.message) for p in cross_section_problems(cfg) if p.path.startswith("train.")]

    assert problems(compile=True, compile_mode="max-autotune") == []
    assert problems(compile_mode="max-autotune") == [
        ("train.compile_mode", "has no effect without train.compile: true")
    ]
    assert ("train.compile_mode", "'fast' is not one of default, reduce-overhead, max-autotune") in problems(
        compile=True, compile_mode="fast"
    )
    zero3 = replace(replace(tiny_cfg(tmp_path), "train", compile=True), "parallel", zero_stage=3)
    assert [(p.path, p.message) for p in cross_section_problems(zero3) if p.path == "train.compile"] == [
        ("train.compile", "is tested with parallel.tp = 1 and ZeRO 0, 1 or 2 only")
    ]
