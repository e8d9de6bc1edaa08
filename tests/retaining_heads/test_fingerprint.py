"""Retaining heads travel with their model (issue 18, item 8): the fingerprint covers weight shapes and what
changes the function, nothing else; a mismatch names the differing fields; `locret` with heads=PATH runs
PATH even when other heads are attached."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import yaml

from densa.models import Transformer
from densa.models.tagged_safetensors import write_tagged
from densa.retaining_heads import (
    RetainingHeadsError,
    attach_heads,
    get_heads,
    heads_state_dict,
    load_heads,
    model_fingerprint,
    save_heads,
)
from densa.retaining_heads.heads import _legacy_fingerprint, fingerprint_fields
from densa.testing.models import random_tokens, tiny_model_config


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory) -> Path:
    from densa.models.hf.exporter import export_hf

    folder = tmp_path_factory.mktemp("hf") / "model"
    torch.manual_seed(0)
    export_hf(folder, Transformer(tiny_model_config()))
    return folder


def test_heads_from_a_recipe_model_load_onto_the_hf_folder(hf_folder, tmp_path) -> None:
    """The config a `retaining_heads:` recipe builds from `init.from_path` (here with its own max_seq_len and
    run metadata in `extra`) and `load_hf_model(folder)` differ only in fields that change nothing."""
    from densa.config.load import load_recipe
    from densa.models.hf.importer import load_hf_model

    recipe = {
        "init": {"from_path": str(hf_folder)},
        "model": {"max_seq_len": 32},
        "retaining_heads": {"enabled": True},
    }
    (tmp_path / "heads.yaml").write_text(yaml.safe_dump(recipe), encoding="utf-8")
    config = load_recipe(tmp_path / "heads.yaml", check=False).model
    config = dataclasses.replace(config, extra={**config.extra, "run": "heads"})
    loaded = load_hf_model(hf_folder)
    assert (config.max_seq_len, loaded.config.max_seq_len) == (32, 64)
    assert _legacy_fingerprint(config) != _legacy_fingerprint(loaded.config)  # what refused them before

    trained = Transformer(config).eval()
    attach_heads(trained, hidden=8)
    path = save_heads(tmp_path / "heads.safetensors", trained)
    heads = load_heads(loaded, path)
    assert heads.fingerprint == model_fingerprint(config) == model_fingerprint(loaded.config)
    for key, value in heads_state_dict(trained).items():
        assert torch.equal(heads.state_dict()[key], value)


def test_a_float32_round_trip_is_the_same_model(tmp_path) -> None:
    base = Transformer(tiny_model_config(norm_eps=1e-5)).eval()
    attach_heads(base, hidden=4)
    path = save_heads(tmp_path / "heads.safetensors", base)
    twin = Transformer(tiny_model_config(norm_eps=9.999999747e-06)).eval()
    assert model_fingerprint(twin.config) == model_fingerprint(base.config)
    load_heads(twin, path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"rope_theta": 500000.0},
            "retaining heads in heads.safetensors were trained for another model: rope_theta=10000.0 there,"
            " rope_theta=500000.0 in this model",
        ),
        (
            {"n_kv_heads": 4},
            "retaining heads in heads.safetensors were trained for another model: n_kv_heads=2 there,"
            " n_kv_heads=4 in this model",
        ),
        (
            {"activation": "relu", "activation_threshold": 0.5},
            "retaining heads in heads.safetensors were trained for another model: activation='silu' there,"
            " activation='relu' in this model, activation_threshold=0.0 there, activation_threshold=0.5 in"
            " this model",
        ),
    ],
)
def test_a_function_changing_field_is_named(tmp_path, change, message) -> None:
    base = Transformer(tiny_model_config()).eval()
    assert (base.config.rope_theta, base.config.n_kv_heads, base.config.activation) == (10000.0, 2, "silu")
    attach_heads(base, hidden=4)
    path = save_heads(tmp_path / "heads.safetensors", base)
    other = Transformer(tiny_model_config(**change)).eval()
    with pytest.raises(RetainingHeadsError) as err:
        load_heads(other, path)
    assert str(err.value) == message


def test_fields_that_change_nothing_are_not_fingerprinted() -> None:
    config = tiny_model_config()
    moved = dataclasses.replace(config, max_seq_len=4096, init_std=0.5, extra={"hf_source": {"repo_id": "x"}})
    assert model_fingerprint(moved) == model_fingerprint(config)
    assert not {"max_seq_len", "init_std", "extra"} & set(fingerprint_fields(config))
    assert model_fingerprint(dataclasses.replace(config, rope_theta=1e6)) != model_fingerprint(config)


def test_heads_files_without_fields_still_load_by_hash(tmp_path) -> None:
    """A file written before the fields were recorded: its (old) hash must match this model's."""
    model = Transformer(tiny_model_config()).eval()
    attach_heads(model, hidden=4)
    tensors = {k: v.contiguous() for k, v in heads_state_dict(model).items()}
    meta = {"format": "densa-retaining-heads", "format_version": 1, "hidden": 4, "activation": "silu"}
    old = write_tagged(
        tmp_path / "old.safetensors", tensors, {**meta, "fingerprint": _legacy_fingerprint(model.config)}
    )
    fresh = Transformer(tiny_model_config()).eval()
    load_heads(fresh, old)
    stale = write_tagged(tmp_path / "stale.safetensors", tensors, {**meta, "fingerprint": "0123456789abcdef"})
    with pytest.raises(RetainingHeadsError) as err:
        load_heads(Transformer(tiny_model_config()).eval(), stale)
    assert str(err.value) == (
        "retaining heads in stale.safetensors were trained for another model: fingerprint 0123456789abcdef !="
        f" this model's {model_fingerprint(fresh.config)} (an older heads file that records no config fields;"
        " retrain the heads for this model)"
    )


def test_locret_with_a_heads_file_runs_that_file(tmp_path) -> None:
    """heads=PATH wins over heads already attached, for the session only; the attached ones come back."""
    from densa.longctx import PolicySession, build_policy, generate_with_policy

    torch.manual_seed(1)
    donor = Transformer(tiny_model_config()).eval()
    attach_heads(donor, hidden=4)
    path = save_heads(tmp_path / "heads.safetensors", donor)
    file_weights = heads_state_dict(donor)

    torch.manual_seed(2)
    model = Transformer(tiny_model_config()).eval()
    model.load_state_dict({k: v for k, v in donor.state_dict().items() if "retaining_heads" not in k})
    attached = attach_heads(model, hidden=4)  # other (random) heads
    assert not torch.equal(attached.layers[0].fc1.weight, file_weights["layers.0.fc1.weight"])

    with PolicySession(model, build_policy("locret", heads=path), 8, 4):
        used = get_heads(model)
        assert used is not attached
        assert all(torch.equal(used.state_dict()[k], v) for k, v in file_weights.items())
    assert get_heads(model) is attached  # put back

    ids = random_tokens(model.config, batch=1, seq=24, seed=3)
    with_file = generate_with_policy(model, ids, build_policy("locret", heads=path), 8, 4, 4)
    bare = Transformer(tiny_model_config()).eval()
    bare.load_state_dict({k: v for k, v in donor.state_dict().items() if "retaining_heads" not in k})
    reference = generate_with_policy(bare, ids, build_policy("locret", heads=path), 8, 4, 4)
    assert torch.equal(with_file.tokens, reference.tokens)
    assert with_file.stats.evictions == reference.stats.evictions > 0
    # A file for another model leaves the attached heads in place.
    other = save_heads(tmp_path / "other.safetensors", _with_heads(tiny_model_config(n_layers=3)))
    with pytest.raises(
        RetainingHeadsError, match="kv policy 'locret': .*n_layers=3 there, n_layers=2 in this"
    ):
        generate_with_policy(model, ids, build_policy("locret", heads=other), 8, 4, 1)
    assert get_heads(model) is attached


def _with_heads(config) -> Transformer:
    model = Transformer(config).eval()
    attach_heads(model, hidden=4)
    return model
