"""The method sections (`ssd:`, `sparsity:`, `retaining_heads:`): loading, cross-section rules, and the
mirrors of the method libraries' own settings."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from densa.config.checks import CHOICES, literal_choices
from densa.config.errors import ConfigError
from densa.config.load import load_recipe_dict
from densa.config.schema import RunConfig, SSDSection
from densa.sparse_moe import MoEError
from densa.sparse_moe.moefication import METHODS
from densa.sparse_moe.router import ROUTERS
from densa.sparse_moe.ssd import SSDConfig
from densa.sparse_moe.stability import METRICS

MODEL = {"vocab_size": 128, "dim": 64, "n_layers": 1, "n_heads": 4, "n_kv_heads": 2, "ffn_dim": 96}
BASE = {
    "model": MODEL,
    "data": {"train": [{"path": "d/train"}], "seq_len": 32},
    "batch": {"global_tokens": 1024, "micro_batch": 2},
    "train": {"steps": 100},
}
SFT = ["data.format=sft", "data.train=[{path: d/train.jsonl}]"]


def load(*overrides: str) -> RunConfig:
    return load_recipe_dict(BASE, "r.yaml", list(overrides))


def problems(*overrides: str) -> list[str]:
    with pytest.raises(ConfigError) as excinfo:
        load(*overrides)
    return excinfo.value.problems


def test_ssd_section_is_ssd_config() -> None:
    # One definition: the recipe section is SSD's own config, its choices are its Literal types.
    assert typing.get_type_hints(RunConfig)["ssd"] is SSDConfig
    assert SSDSection is SSDConfig and RunConfig.__dataclass_fields__["ssd"].default_factory() == SSDConfig()
    hints = typing.get_type_hints(SSDConfig)
    assert literal_choices(hints["stability_metric"]) == METRICS == ("ari", "overlap")
    assert literal_choices(hints["method"]) == METHODS == ("kmeans", "random", "contiguous")
    assert literal_choices(hints["router"]) == ROUTERS == ("centroid", "mlp")
    assert "ssd.router" not in CHOICES  # no mirrored table left
    cfg = load("ssd.enabled=true", "ssd.num_experts=8", "ssd.router=MLP")
    assert isinstance(cfg.ssd, SSDConfig) and cfg.ssd.router == "mlp"


def test_literal_choices_rechecked_for_python_configs() -> None:
    cfg = load()
    bad = dataclasses.replace(cfg, schedule=dataclasses.replace(cfg.schedule, kind="cosin"))
    from densa.config.checks import cross_section_problems

    assert [p for p in cross_section_problems(bad) if p.path == "schedule.kind"][0].message == (
        "'cosin' is not one of constant, linear, cosine, wsd"
    )
    assert problems("schedule.kind=cosin") == [
        "--set: schedule.kind: 'cosin' is not one of constant, linear, cosine, wsd (did you mean 'cosine'?)"
    ]
    assert problems("parallel.precision=3") == [
        "--set: parallel.precision: expected one of fp32, bf16, fp16, got int 3"
    ]


def test_ssd_single_field_rules_in_python_and_recipe() -> None:
    with pytest.raises(MoEError, match=r"^ssd\.top_k: must be in 1\.\.ssd\.num_experts \(8\), got 9$"):
        SSDConfig(num_experts=8, top_k=9)
    assert problems("ssd.num_experts=8", "ssd.top_k=9") == [
        "--set: ssd.top_k: must be in 1..ssd.num_experts (8), got 9"
    ]


def test_method_sections_load_and_default_off() -> None:
    cfg = load()
    assert not (cfg.ssd.enabled or cfg.sparsity.prosparse.enabled or cfg.retaining_heads.enabled)
    assert cfg.sparsity.track_interval == 0
    cfg = load("ssd.enabled=true", "ssd.num_experts=8", "ssd.switch_steps=[50, 10]")
    assert cfg.ssd.switch_steps == (50, 10)
    cfg = load("sparsity.prosparse={enabled: true, l1_stages: [[10, 1e-3], [20, 2e-3]]}")
    assert cfg.sparsity.prosparse.l1_stages == ((10, 1e-3), (20, 2e-3))


def test_unknown_and_mistyped_method_keys() -> None:
    assert problems("ssd.top_kk=2") == ["--set: ssd.top_kk: unknown key (did you mean 'top_k'?)"]
    assert problems("ssd.router=centriod") == [
        "--set: ssd.router: 'centriod' is not one of centroid, mlp (did you mean 'centroid'?)"
    ]
    assert problems("sparsity.prosparse.l1_stages=[[10]]") == [
        "--set: sparsity.prosparse.l1_stages.0: expected list [int, float], got 1 item"
    ]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["ssd.num_experts=7"], "ssd.num_experts: 7 does not divide model.ffn_dim (96)"),
        (["ssd.num_experts=8", "ssd.top_k=9"], "ssd.top_k: must be in 1..ssd.num_experts (8), got 9"),
        (["ssd.num_experts=8", "ssd.top_k=0"], "ssd.top_k: must be in 1..ssd.num_experts (8), got 0"),
        (
            ["parallel.tp=2"],
            "parallel.tp: ssd.enabled needs tp = 1, got 2: a TP rank holds 1/tp of every FFN's neurons, and"
            " SSD clusters and routes over all of a layer's neurons (experts split across TP ranks are not"
            " implemented)",
        ),
        (
            ["parallel.zero_stage=3"],
            "parallel.zero_stage: ssd.enabled needs ZeRO stage 0, 1 or 2, got 3: ZeRO-3 partitions the"
            " weights themselves, which SSD clusters and permutes whole",
        ),
        (
            ["parallel.precision=bf16"],
            "parallel.precision: ssd.enabled with bf16 needs parallel.zero_stage 1 or 2, got 0: DeepSpeed's"
            " ZeRO-0 bf16 optimizer keeps its fp32 masters in flat buffers with no per-parameter link that"
            " SSD could permute",
        ),
        (
            ["parallel.precision=fp16"],
            "parallel.precision: ssd.enabled needs fp32 or bf16, got fp16 (untested)",
        ),
        (["ssd.final_dense_fraction=1.5"], "ssd.final_dense_fraction: must be in [0, 1], got 1.5"),
        (["ssd.switch_steps=[0, 101]"], "ssd.switch_steps.0: 0 is outside 1..train.steps (100)"),
        (
            ["ssd.interval=0"],
            "ssd.interval: is 0 and ssd.switch_steps is empty: the model would never switch",
        ),
        (["ssd.router_lr=-1"], "ssd.router_lr: must be >= 0, got -1.0"),
    ],
)
def test_ssd_rules(overrides: list[str], expected: str) -> None:
    assert f"--set: {expected}" in problems("ssd.enabled=true", "ssd.num_experts=8", *overrides)


@pytest.mark.parametrize(
    "settings", [["parallel.zero_stage=1"], ["parallel.zero_stage=2", "parallel.precision=bf16"]]
)
def test_ssd_accepts_zero_1_and_2_in_fp32_and_bf16(settings: list[str]) -> None:
    cfg = load("ssd.enabled=true", "ssd.num_experts=8", *settings)  # raises ConfigError on any problem
    assert cfg.ssd.enabled and (cfg.parallel.zero_stage, cfg.parallel.precision) != (0, "fp32")


def test_ssd_rules_only_when_enabled() -> None:
    # SSD's own rules (experts dividing the FFN, bf16 needing ZeRO >= 1) stay quiet; the switched-off section
    # is named.
    assert problems("ssd.num_experts=7", "parallel.precision=bf16") == [
        "r.yaml: ssd.enabled: is false, so ssd.num_experts has no effect"
        " (set ssd.enabled: true, or remove it)"
    ]


@pytest.mark.parametrize("section", ["lora", "retaining_heads", "plugin", "sparsity.prosparse"])
def test_settings_of_a_switched_off_section_are_refused(section: str) -> None:
    key = {"lora": "rank=16", "retaining_heads": "hidden=64", "plugin": "kind=task"}.get(
        section, "activation=fatrelu"
    )
    found = problems(f"{section}.{key}")
    name = key.split("=")[0]
    assert found == [
        f"r.yaml: {section}.enabled: is false, so {section}.{name} has no effect"
        f" (set {section}.enabled: true, or remove it)"
    ]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["sparsity.track_interval=-1"], "sparsity.track_interval: must be >= 0, got -1"),
        (["sparsity.track_cett=1.5"], "sparsity.track_cett: must be in [0, 1], got 1.5"),
        (
            ["sparsity.track_cett=0.2", "sparsity.track_threshold=0.1"],
            "sparsity.track_threshold: give either track_threshold or track_cett, not both",
        ),
        (
            ["sparsity.track_interval=10", "parallel.tp=2"],
            "sparsity.track_interval: tracking needs parallel.tp = 1, got 2",
        ),
        (
            ["sparsity.prosparse.enabled=true", "parallel.tp=2"],
            "sparsity.prosparse.enabled: needs parallel.tp = 1, got 2",
        ),
        (
            ["sparsity.prosparse.enabled=true", "sparsity.prosparse.fatrelu_threshold=0.1"],
            "sparsity.prosparse.fatrelu_threshold: only used with activation: fatrelu (is relu)",
        ),
        (
            ["sparsity.prosparse={enabled: true, activation: fatrelu, fatrelu_threshold: -1}"],
            "sparsity.prosparse.fatrelu_threshold: must be >= 0, got -1.0",
        ),
        (
            ["sparsity.prosparse={enabled: true, l1_stages: [[10, 1e-3], [10, -1]]}"],
            "sparsity.prosparse.l1_stages.1: end step 10 must exceed 10",
        ),
        (
            ["sparsity.prosparse={enabled: true, l1_stages: [[10, -1]]}"],
            "sparsity.prosparse.l1_stages.0: lambda must be >= 0, got -1.0",
        ),
        (
            ["sparsity.prosparse={enabled: true, l1_stages: [[10, 1]]}", "parallel.precision=fp16"],
            "sparsity.prosparse.l1_stages: the L1 gradient is not loss-scaled: use bf16 or fp32",
        ),
        (
            ["sparsity.prosparse.enabled=true", "ssd.enabled=true", "ssd.num_experts=8"],
            "sparsity.prosparse.enabled: cannot be combined with ssd.enabled",
        ),
        (
            ["sparsity.prosparse.activation=gelu"],
            "sparsity.prosparse.activation: 'gelu' is not one of relu, fatrelu (did you mean 'relu'?)",
        ),
    ],
)
def test_sparsity_rules(overrides: list[str], expected: str) -> None:
    assert f"--set: {expected}" in problems(*overrides)


def test_retaining_heads_rules() -> None:
    ok = [*SFT, "retaining_heads.enabled=true", "init.from_path=runs/base"]
    assert load(*ok).retaining_heads.enabled
    got = problems("retaining_heads.enabled=true", "parallel.tp=2", "export.hf_dir=out/hf")
    assert "r.yaml: init.from_path: retaining_heads.enabled needs a trained backbone to load" in got
    assert "--set: parallel.tp: retaining_heads.enabled needs tp = 1, got 2" in got
    # Token-level (pretrain) rows mark no answer: the recipe must say how many final tokens are.
    assert (
        "r.yaml: retaining_heads.answer_tokens: token-level data (data.format pretrain) marks no answer: set"
        " how many final tokens of each row are the answer (e.g. 64), or use sft data or retaining_heads.task"
    ) in got
    assert (
        "--set: export.hf_dir: a retaining-head run writes retaining_heads.out_file, not an HF folder" in got
    )
    got = problems(*ok, "ssd.enabled=true", "ssd.num_experts=8", "sparsity.prosparse.enabled=true")
    assert (
        "--set: ssd.enabled: cannot be combined with retaining_heads.enabled (the backbone is frozen)" in got
    )
    assert (
        "--set: sparsity.prosparse.enabled: cannot be combined with retaining_heads.enabled"
        " (the backbone is frozen)" in got
    )
    assert "--set: retaining_heads.hidden: must be > 0, got 0" in problems(*ok, "retaining_heads.hidden=0")


def test_recipe_schema_does_not_import_torch() -> None:
    # The ssd: section lives in densa.sparse_moe, whose package loads its torch modules lazily (PEP 562).
    import subprocess
    import sys

    code = "import sys, densa.config.load, densa.sparse_moe; print('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout == "False\n"
