"""The recipe loader: strict keys with hints, expected types, base inheritance, overrides, round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from densa.config.errors import ConfigError
from densa.config.load import dump_recipe, load_recipe, load_recipe_dict
from densa.config.schema import DatasetSource, RunConfig
from densa.errors import DensaError

MODEL = {"vocab_size": 128, "dim": 32, "n_layers": 1, "n_heads": 4, "ffn_dim": 64}
MINIMAL = {
    "model": MODEL,
    "data": {"train": [{"path": "d/train"}], "seq_len": 16},
    "batch": {"global_tokens": 128, "micro_batch": 2},
}


def problems(excinfo: pytest.ExceptionInfo[ConfigError]) -> list[str]:
    return excinfo.value.problems


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_minimal_recipe_builds_frozen_tree() -> None:
    cfg = load_recipe_dict(MINIMAL, "r.yaml")
    assert isinstance(cfg, RunConfig)
    assert cfg.data.train == (DatasetSource(path="d/train"),)
    assert cfg.model.n_kv_heads == 4 and cfg.model.head_dim == 8
    assert cfg.optim.betas == (0.9, 0.95)


def test_unknown_key_names_dotted_path_and_hint() -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_recipe_dict({**MINIMAL, "schedule": {"decay_fracton": 0.2}}, "recipe.yaml")
    assert (
        str(excinfo.value)
        == "recipe.yaml: schedule.decay_fracton: unknown key (did you mean 'decay_fraction'?)"
    )
    assert isinstance(excinfo.value, DensaError)


def test_unknown_key_without_close_match_lists_valid_keys() -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_recipe_dict({**MINIMAL, "eval": {"zzz": 1}}, "r.yaml")
    assert problems(excinfo) == ["r.yaml: eval.zzz: unknown key (valid keys: interval, max_batches)"]


def test_type_errors_show_expected_type_and_are_all_collected() -> None:
    data = {
        **MINIMAL,
        "optim": {"lr": "fast", "betas": [0.9], "weight_decay": 0},
        "train": {"steps": True},
        "logging": {"tensorboard": "yes"},
        "run": {"name": 5},
        "data": {"train": [{"pth": "x"}], "seq_len": 16.0},
        "evl": {},
    }
    with pytest.raises(ConfigError) as excinfo:
        load_recipe_dict(data, "r.yaml")
    assert sorted(problems(excinfo)) == sorted(
        [
            "r.yaml: evl: unknown key (did you mean 'eval'?)",
            "r.yaml: run.name: expected string, got int 5",
            "r.yaml: data.train.0.pth: unknown key (did you mean 'path'?)",
            "r.yaml: data.train.0.path: missing required field (string)",
            "r.yaml: data.seq_len: expected int, got float 16.0",
            "r.yaml: optim.lr: expected float, got str 'fast'",
            "r.yaml: optim.betas: expected list of 2 floats, got 1 item",
            "r.yaml: train.steps: expected int, got bool True",
            "r.yaml: logging.tensorboard: expected bool (true/false), got str 'yes'",
        ]
    )
    assert str(excinfo.value).startswith("9 problems:\n  - ")


def test_int_coerces_to_float_and_list_to_tuple() -> None:
    cfg = load_recipe_dict({**MINIMAL, "optim": {"lr": 1, "betas": [0, 1 - 1e-3]}}, "r.yaml")
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
    assert cfg.optim.betas == (0.0, 0.999)


def test_missing_required_model_fields_named() -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_recipe_dict({"model": {"vocab_size": 8, "dim": 8}}, "r.yaml")
    assert problems(excinfo) == [
        "r.yaml: model.n_layers: missing required field (int)",
        "r.yaml: model.n_heads: missing required field (int)",
        "r.yaml: model.ffn_dim: missing required field (int)",
    ]
    with pytest.raises(ConfigError, match="r.yaml: model: missing required field"):
        load_recipe_dict({}, "r.yaml")


def test_choices_match_case_insensitively_and_hint() -> None:
    cfg = load_recipe_dict({**MINIMAL, "parallel": {"precision": "BF16"}}, "r.yaml")
    assert cfg.parallel.precision == "bf16"
    with pytest.raises(ConfigError) as excinfo:
        load_recipe_dict(
            {**MINIMAL, "schedule": {"kind": "cosin"}, "model": {**MODEL, "activation": "relu3"}}, "r.yaml"
        )
    assert problems(excinfo) == [
        "r.yaml: model.activation: 'relu3' is not one of relu, relu2, silu, gelu, gelu_tanh"
        " (did you mean 'relu'?)",
        "r.yaml: schedule.kind: 'cosin' is not one of constant, linear, cosine, wsd (did you mean 'cosine'?)",
    ]


def test_section_post_init_errors_point_at_field() -> None:
    model = {**MODEL, "rope_scaling": {"type": "linear", "factor": 0}}
    with pytest.raises(ConfigError) as excinfo:
        load_recipe_dict({**MINIMAL, "model": model}, "r.yaml")
    assert problems(excinfo) == ["r.yaml: model.rope_scaling.factor: must be > 0, got 0.0"]
    with pytest.raises(ConfigError, match=r"r.yaml: model: dim \(32\) must be divisible by n_heads \(5\)"):
        load_recipe_dict({**MINIMAL, "model": {**MODEL, "n_heads": 5}}, "r.yaml")


def test_yaml_file_exponent_floats_and_duplicate_keys(tmp_path: Path) -> None:
    path = write(tmp_path, "r.yaml", yaml.safe_dump(MINIMAL) + "optim:\n  lr: 3e-4\n  eps: 1E-8\n")
    cfg = load_recipe(path)
    assert cfg.optim.lr == 3e-4 and cfg.optim.eps == 1e-8
    dup = write(tmp_path, "dup.yaml", "optim:\n  lr: 1.0\n  lr: 2.0\n")
    with pytest.raises(ConfigError) as excinfo:
        load_recipe(dup)
    assert problems(excinfo) == [f"{dup}: line 3: duplicate key 'lr' (first at line 2)"]


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nope.yaml: recipe file not found"):
        load_recipe(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="bad.yaml: invalid YAML"):
        load_recipe(write(tmp_path, "bad.yaml", "model: [1, 2\n"))
    with pytest.raises(ConfigError, match="list.yaml: a recipe must be a mapping of sections, got list"):
        load_recipe(write(tmp_path, "list.yaml", "- 1\n"))


def test_base_inherits_deep_merges_and_attributes_errors(tmp_path: Path) -> None:
    (tmp_path / "bases").mkdir()
    base_text = yaml.safe_dump(
        {**MINIMAL, "optim": {"lr": 0.1, "weight_decay": 0.0}, "eval": {"intervall": 1}}
    )
    write(tmp_path / "bases", "root.yaml", base_text.replace("intervall: 1", "max_batches: 3"))
    write(tmp_path / "bases", "mid.yaml", "base: root.yaml\noptim: {lr: 0.2}\n")
    child = write(tmp_path, "child.yaml", "base: bases/mid.yaml\noptim: {eps: 1.0e-6}\ndata: {seq_len: 32}\n")
    cfg = load_recipe(child)
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.eps) == (0.2, 0.0, 1e-6)
    assert cfg.data.seq_len == 32 and cfg.data.train == (
        DatasetSource(path="d/train"),
    )  # merged, not replaced
    assert cfg.eval.max_batches == 3
    # A typo in the base file is reported against the base file, not the child.
    write(tmp_path / "bases", "root.yaml", base_text)
    with pytest.raises(ConfigError) as excinfo:
        load_recipe(child)
    root = tmp_path / "bases" / "mid.yaml"
    assert problems(excinfo) == [
        f"{root.parent / 'root.yaml'}: eval.intervall: unknown key (did you mean 'interval'?)"
    ]


def test_base_cycle_and_missing_base(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", "base: b.yaml\n")
    write(tmp_path, "b.yaml", "base: a.yaml\n")
    with pytest.raises(ConfigError, match=r"base: cycle a.yaml -> b.yaml -> a.yaml"):
        load_recipe(tmp_path / "a.yaml")
    with pytest.raises(ConfigError, match=r"c.yaml: base: file not found: .*zz.yaml"):
        load_recipe(write(tmp_path, "c.yaml", "base: zz.yaml\n"))


def test_overrides_parse_yaml_scalars_and_validate() -> None:
    cfg = load_recipe_dict(
        MINIMAL,
        "r.yaml",
        [
            "optim.lr=1e-3",
            "optim.betas=[0.8, 0.9]",
            "data.train.0.weight=2",
            "model.rope_scaling={type: linear, factor: 2}",
        ],
    )
    assert cfg.optim.lr == 1e-3 and cfg.optim.betas == (0.8, 0.9)
    assert cfg.data.train[0].weight == 2.0
    assert cfg.model.rope_scaling is not None and cfg.model.rope_scaling.factor == 2.0
    with pytest.raises(ConfigError) as excinfo:
        load_recipe_dict(MINIMAL, "r.yaml", ["optim.lrr=1", "train.steps=many"])
    assert problems(excinfo) == [
        "--set: optim.lrr: unknown key (did you mean 'lr'?)",
        "--set: train.steps: expected int, got str 'many'",
    ]


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("optim.lr", "--set optim.lr: expected KEY=VALUE"),
        ("base=x.yaml", "--set base=x.yaml: base can only be set inside a recipe file"),
        ("optim.lr.x=1", "--set optim.lr.x=1: optim.lr is a value, not a section"),
        ("data.train.3.weight=1", "--set data.train.3.weight=1: data.train: no list item 3 (the list has 1)"),
    ],
)
def test_bad_override_syntax(item: str, message: str) -> None:
    data = {**MINIMAL, "optim": {"lr": 0.1}}
    with pytest.raises(ConfigError) as excinfo:
        load_recipe_dict(data, "r.yaml", [item])
    assert str(excinfo.value).startswith(message)


def test_cross_section_problems_raised_with_structure_ok() -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_recipe_dict(MINIMAL, "r.yaml", ["batch.micro_batch=3", "schedule.min_lr_ratio=2"])
    assert problems(excinfo) == [
        "--set: schedule.min_lr_ratio: must be in [0, 1], got 2.0",
        "r.yaml: batch.global_tokens: 128 is not divisible by data.seq_len × batch.micro_batch × dp"
        " = 16 × 3 × 1 = 48 (nearest valid: 96 or 144)",
    ]
    assert load_recipe_dict(MINIMAL, "r.yaml", ["batch.micro_batch=3"], check=False).batch.micro_batch == 3


def test_dump_round_trips() -> None:
    cfg = load_recipe_dict(
        MINIMAL,
        "r.yaml",
        [
            "model.rope_scaling={type: llama3, factor: 8}",
            "init.freeze=[embed_tokens.*]",
            "deepspeed={a: {b: [1, 2]}}",
        ],
    )
    text = dump_recipe(cfg)
    assert "betas: [0.9, 0.95]" in text
    assert load_recipe_dict(yaml.safe_load(text), "dump.yaml") == cfg
