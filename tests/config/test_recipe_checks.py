"""Cross-section rules and the generated DeepSpeed config."""

from __future__ import annotations

import dataclasses

import pytest

from densa.config.checks import DerivedBatch, cross_section_problems, derived_batch, validate
from densa.config.deepspeed_config import build_deepspeed_config
from densa.config.errors import ConfigError
from densa.config.load import load_recipe_dict
from densa.config.schema import RunConfig

MODEL = {"vocab_size": 128, "dim": 64, "n_layers": 1, "n_heads": 4, "n_kv_heads": 2, "ffn_dim": 96}
BASE = {
    "model": MODEL,
    "data": {"train": [{"path": "d/train"}], "seq_len": 32},
    "batch": {"global_tokens": 1024, "micro_batch": 2},  # 32 sequences
    "train": {"steps": 100},
}


def cfg(*overrides: str, check: bool = True) -> RunConfig:
    return load_recipe_dict(BASE, "r.yaml", list(overrides), check=check)


@pytest.mark.parametrize(
    ("world_size", "tp", "expected"),
    [(1, 1, (1, 16, 2, 32)), (4, 1, (4, 4, 2, 32)), (4, 2, (2, 8, 2, 32)), (16, 1, (16, 1, 2, 32))],
)
def test_derived_batch(world_size: int, tp: int, expected: tuple[int, ...]) -> None:
    got = derived_batch(cfg(f"parallel.tp={tp}"), world_size)
    assert got == DerivedBatch(*expected)
    assert got.dp * got.grad_accum * got.micro_batch == got.global_samples


def test_batch_not_divisible_for_world_size() -> None:
    c = cfg()
    with pytest.raises(ConfigError) as excinfo:
        derived_batch(c, 3)
    assert str(excinfo.value) == (
        "batch.global_tokens: 1024 is not divisible by data.seq_len × batch.micro_batch × dp"
        " = 32 × 2 × 3 = 192 (nearest valid: 960 or 1152)"
    )
    with pytest.raises(ConfigError, match="parallel.tp: world size 3 is not divisible by tp=2"):
        derived_batch(cfg("parallel.tp=2"), 3)
    with pytest.raises(
        ConfigError, match="global_tokens: 1024 is not divisible .* = 32 × 2 × 32 = 2048 .*: 2048"
    ):
        validate(c, 32)


def test_problems_collected_together() -> None:
    c = cfg(check=False)
    bad = dataclasses.replace(
        c,
        parallel=dataclasses.replace(c.parallel, tp=3, zero_stage=4, precision="fp16"),
        schedule=dataclasses.replace(
            c.schedule, kind="wsd", warmup_steps=95, decay_steps=10, min_lr_ratio=-0.1
        ),
        data=dataclasses.replace(c.data, train=()),
        checkpoint=dataclasses.replace(c.checkpoint, interval=0),
        optim=dataclasses.replace(c.optim, betas=(0.9, 1.0)),
    )
    with pytest.raises(ConfigError) as excinfo:
        validate(bad, device="cpu", source="r.yaml")
    assert excinfo.value.problems == [
        "r.yaml: checkpoint.interval: must be > 0, got 0",
        "r.yaml: optim.betas.1: must be in [0, 1), got 1.0",
        "r.yaml: parallel.zero_stage: must be 0, 1, 2 or 3, got 4",
        "r.yaml: model.n_heads: 4 is not divisible by parallel.tp=3",
        "r.yaml: model.n_kv_heads: 2 is not divisible by parallel.tp=3",
        "r.yaml: parallel.precision: fp16 needs a GPU (this run is on cpu); use bf16 or fp32",
        "r.yaml: schedule.min_lr_ratio: must be in [0, 1], got -0.1",
        "r.yaml: schedule.warmup_steps: warmup (95) + decay (10) = 105 exceeds train.steps (100)",
        "r.yaml: data.train: no training datasets (add at least one {path: PREFIX})",
    ]


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        (
            ["schedule.kind=cosine", "schedule.decay_steps=5"],
            "schedule.decay_steps: only used when schedule.kind is wsd",
        ),
        (
            ["schedule.kind=wsd", "schedule.decay_shape=exp", "schedule.min_lr_ratio=0"],
            "exp decay interpolates",
        ),
        (
            ["schedule.kind=wsd", "schedule.decay_fraction=0"],
            "schedule.decay_fraction: must be in (0, 1], got 0.0",
        ),
        (["schedule.warmup_steps=101"], "warmup (101) exceeds train.steps (100)"),
        (["eval.interval=10"], "eval.interval: is 10 but data.valid is empty"),
        (
            ["data.format=sft"],
            "data.train.0.path: data.format is sft, expected a .jsonl or .parquet file or an existing "
            "datasets or hub cache folder, got 'd/train'",
        ),
        (["data.train.0.path=d/train.bin"], "data.train.0.path: give the dataset prefix without extension"),
        (["data.pack=true"], "data.pack: packs SFT examples (format sft); pretraining data is packed"),
        (["data.train.0.weight=0"], "data.train.0.weight: must be > 0, got 0.0"),
        (["optim.lr=0"], "optim.lr: must be > 0, got 0.0"),
        (["logging.log_interval=0"], "logging.log_interval: must be > 0, got 0"),
        (["checkpoint.resume="], "checkpoint.resume: is empty"),
        (
            ["deepspeed.optimizer={type: Adam}"],
            "deepspeed.optimizer: is built by the trainer from the optim section",
        ),
    ],
)
def test_single_rules(overrides: list[str], problem: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        cfg(*overrides)
    assert any(problem in p for p in excinfo.value.problems), excinfo.value.problems


def test_valid_recipe_has_no_problems() -> None:
    assert cross_section_problems(cfg(), 8, device="cpu") == []
    assert cross_section_problems(cfg("parallel.precision=fp16"), 8, device="cuda") == []


def test_generated_deepspeed_config() -> None:
    c = cfg("parallel.zero_stage=2", "parallel.precision=fp16", "optim.grad_clip=0.5")
    ds = build_deepspeed_config(c, 4)
    assert ds == {
        "train_batch_size": 32,
        "train_micro_batch_size_per_gpu": 2,
        "gradient_accumulation_steps": 4,
        "gradient_clipping": 0.5,
        "zero_optimization": {"stage": 2},
        "bf16": {"enabled": False},
        "fp16": {"enabled": True, "loss_scale": 0},
        "steps_per_print": 1_000_000_000,
        "wall_clock_breakdown": False,
    }
    assert (
        ds["train_batch_size"] == ds["train_micro_batch_size_per_gpu"] * ds["gradient_accumulation_steps"] * 4
    )


def test_deepspeed_section_adds_keys() -> None:
    c = cfg(
        "deepspeed={zero_optimization: {overlap_comm: true}, fp16: {enabled: false},"
        " wall_clock_breakdown: true, train_batch_size: 32, gradient_clipping: 1,"
        " activation_checkpointing: {partition_activations: true}}"
    )
    ds = build_deepspeed_config(c, 2)
    assert ds["zero_optimization"] == {"stage": 0, "overlap_comm": True}
    assert ds["wall_clock_breakdown"] is True  # a default, not a recipe decision: may be changed
    assert ds["activation_checkpointing"] == {"partition_activations": True}
    assert c.deepspeed["zero_optimization"] == {"overlap_comm": True}  # the recipe is not mutated


def test_deepspeed_contradictions_name_key_and_both_values() -> None:
    overrides = [
        "deepspeed={zero_optimization: {stage: 3}, bf16: {enabled: true}, train_micro_batch_size_per_gpu: 8}",
    ]
    with pytest.raises(ConfigError) as excinfo:
        cfg(*overrides)
    generated = "contradicts the generated value"
    assert excinfo.value.problems == [
        f"--set: deepspeed.zero_optimization.stage: 3 {generated} 0 (set by parallel.zero_stage)",
        f"--set: deepspeed.bf16.enabled: True {generated} False (set by parallel.precision)",
        f"--set: deepspeed.train_micro_batch_size_per_gpu: 8 {generated} 2 (set by batch.micro_batch)",
    ]
    # Batch keys can only be compared once the world size is known.
    c = cfg("deepspeed={train_batch_size: 32}")
    bigger = dataclasses.replace(c, batch=dataclasses.replace(c.batch, global_tokens=2048))
    with pytest.raises(
        ConfigError, match="deepspeed.train_batch_size: 32 contradicts the generated value 64"
    ):
        build_deepspeed_config(bigger, 2)
    with pytest.raises(ConfigError, match="deepspeed.zero_optimization: expected a mapping"):
        cfg("deepspeed={zero_optimization: 2}")
